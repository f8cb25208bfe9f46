"""``tfrs-cosine serve`` in a subprocess on free loopback ports: the harness the e2e tests
and ``benchmarks/serving.py`` share.

``ServerProcess(args).wait_available(model)`` starts ``python -m training.cli serve
--port P --rest_api_port Q ARGS`` (its log in a file), waits until GetModelStatus shows
an AVAILABLE version (through the TF-free client), and ``stop()`` sends SIGTERM and waits.
Any other command (``tensorflow_model_server``) runs the same way with ``command=``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from serving.client import RecommenderClient
from serving.errors import ServingError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A model server subprocess on free loopback ports, with its log file."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        command: Sequence[str] | None = None,
        grpc_port: int | None = None,
        rest_port: int | None = None,
    ):
        self.grpc_port = grpc_port or free_port()
        self.rest_port = rest_port if rest_port is not None else free_port()
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.rest = f"http://127.0.0.1:{self.rest_port}"
        self.log_path = Path(log)
        if command is None:
            command = [
                sys.executable, "-m", "training.cli", "serve", "--port", str(self.grpc_port),
                "--rest_api_port", str(self.rest_port), *args,
            ]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            list(command), cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_available(self, model: str, timeout: float = 300) -> None:
        """Returns once ``model`` has an AVAILABLE version; AssertionError with the log if
        the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        with RecommenderClient(self.target, model, timeout=2, retries=0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
                try:
                    if any(s.state == "AVAILABLE" for s in client.status()):
                        return
                except ServingError:
                    pass
                time.sleep(0.2)  # polling a subprocess that has no readiness signal
        raise AssertionError(f"model {model} not AVAILABLE in {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
