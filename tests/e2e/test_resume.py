"""Runs you can trust, with real processes: kills, signals, the lock and ``tfrs-cosine runs``.

No sleeps: each test reads the training process's stdout line by line and acts when the
line for epoch k appears (printed once epoch k's checkpoint is written).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli

from training import rundir

# 400 users x 120 items, 8 epochs at most: with this learning rate validation recall@10
# peaks at epoch 4 and early stopping (patience 2) ends the run after epoch 6.
SETTINGS = [
    "data.num_users=400", "data.num_items=120", "training.batch_size=256",
    "training.epochs=8", "training.early_stopping_patience=2", "training.learning_rate=0.5",
    "evaluation.ks=[1, 5, 10, 50]",
]


def _sets(*overrides: str) -> list[str]:
    return [arg for o in (*SETTINGS, *overrides) for arg in ("--set", o)]


class Training:
    """``tfrs-cosine train`` in a subprocess whose stdout is read line by line."""

    def __init__(self, run_dir: Path, *args: str, timeout: float = 600):
        self.stderr = (run_dir.parent / f"{run_dir.name}.stderr").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "train", "--run-dir", str(run_dir), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.lines: list[str] = []
        self._watchdog = threading.Timer(timeout, self.process.kill)
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_epoch(self, epoch: int) -> str:
        """Blocks until the line of epoch ``epoch`` (its checkpoint is written)."""
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(f"epoch {epoch}/"):
                return line
        self.stderr.seek(0)
        raise AssertionError(f"no epoch {epoch} line; stdout: {self.lines}; "
                             f"stderr: {self.stderr.read()[-2000:]}")

    def finish(self) -> tuple[int, str, str]:
        """Waits for the exit: ``(code, rest of stdout, stderr)``."""
        rest = self.process.stdout.read()
        code = self.process.wait()
        self._watchdog.cancel()
        self.stderr.seek(0)
        return code, rest, self.stderr.read()


def _runs(*paths: Path) -> list[dict]:
    """``tfrs-cosine runs --json`` in a fresh interpreter, which must not load TensorFlow."""
    code = ("import sys\nfrom training.cli import main\n"
            f"code = main(['runs', '--json', *{[str(p) for p in paths]!r}])\n"
            "assert 'tensorflow' not in sys.modules, 'runs imported TensorFlow'\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(run_dir / rundir.MODEL / "weights"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_usage_error(process, *parts: str) -> None:
    assert process.returncode == 2, process.stderr
    assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr, process.stderr
    assert process.stderr.startswith("tfrs-cosine: error: ")
    for part in parts:
        assert part in process.stderr, process.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run that was never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_cli("train", "--run-dir", str(run_dir), *_sets(), check=True)
    info = json.loads((run_dir / rundir.RUN_INFO).read_text())
    # The scenario below needs early stopping with the best epoch before the last.
    assert info["epochs_completed"] < 8 and info["best_epoch"] < info["epochs_completed"], info
    return run_dir


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    history = json.loads((run_dir / rundir.HISTORY).read_text())
    assert history == json.loads((reference / rundir.HISTORY).read_text())  # bit for bit
    ours, theirs = (json.loads((d / rundir.RUN_INFO).read_text()) for d in (run_dir, reference))
    for key in ("status", "epochs_completed", "best_epoch", "best_value", "weights_epoch"):
        assert ours[key] == theirs[key], key
    a, b = _weights(run_dir), _weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    metrics = [json.loads((d / rundir.METRICS).read_text()) for d in (run_dir, reference)]
    assert metrics[0]["test"] == metrics[1]["test"]


@pytest.mark.parametrize("signum, epoch", [
    (signal.SIGKILL, 2), (signal.SIGKILL, 5), (signal.SIGTERM, 3), (signal.SIGINT, 1),
], ids=["SIGKILL@2", "SIGKILL@5", "SIGTERM@3", "SIGINT@1"])
def test_a_run_stopped_at_any_epoch_resumes_to_the_uninterrupted_result(
    reference, tmp_path, signum, epoch
):
    run_dir = tmp_path / "run"
    job = Training(run_dir, *_sets())
    job.wait_for_epoch(epoch)
    job.process.send_signal(signum)
    code, out, err = job.finish()
    info = json.loads((run_dir / rundir.RUN_INFO).read_text())
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert info["status"] == "running"  # nobody could write anything
        (state,) = _runs(run_dir)
        assert (state["status"], state["live"]) == ("interrupted (process gone)", False)
    else:
        name = signal.Signals(signum).name
        assert code == 128 + signum, err
        assert err.strip().splitlines()[-1] == f"tfrs-cosine: interrupted by {name}"
        assert (info["status"], info["error"]) == ("interrupted", f"interrupted by {name}")
        assert "--resume" in out
        assert _runs(run_dir)[0]["status"] == "interrupted"
    completed = rundir.latest_checkpoint_epoch(run_dir)
    assert completed >= epoch
    if signum == signal.SIGINT:  # an unfinished run is not evaluated as if it were complete
        _assert_usage_error(run_cli("evaluate", str(run_dir)), "is not complete")

    if signum == signal.SIGKILL and epoch == 2:
        before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        _assert_usage_error(
            run_cli("train", "--run-dir", str(run_dir), "--resume",
                    "--set", "model.embedding_dim=16", "--set", "data.num_items=100"),
            "cannot resume", "data.num_items (120 -> 100)", "model.embedding_dim (32 -> 16)",
        )
        _assert_usage_error(
            run_cli("train", "--run-dir", str(run_dir), "--resume", "--set", "training.epochs=1"),
            f"its checkpoint already holds {completed} epochs",
        )
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

    # SIGTERM: train longer on resume (an allowed change); early stopping still ends at
    # the same epoch, so the result is the reference's.
    more = ["--set", "training.epochs=9"] if signum == signal.SIGTERM else []
    resumed = run_cli("train", "--run-dir", str(run_dir), "--resume", *more, check=True)
    assert f"resuming {run_dir} after epoch {completed}" in resumed.stdout
    assert ("took over" in resumed.stdout) == (signum == signal.SIGKILL)
    _assert_same_run(run_dir, reference)
    info = json.loads((run_dir / rundir.RUN_INFO).read_text())
    (entry,) = info["resumes"]
    assert entry["from_epoch"] == completed
    if more:
        assert entry["changed"] == {"training.epochs": [8, 9]}
        assert "epochs = 9" in (run_dir / rundir.CONFIG).read_text()  # the config in effect
    else:
        assert entry["changed"] == {}


def test_a_live_run_is_locked_and_listed_and_a_dead_one_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    host = socket.gethostname()
    job = Training(run_dir, *_sets("training.epochs=60", "training.early_stopping_patience=0"))
    job.wait_for_epoch(1)
    try:
        (state,) = _runs(run_dir)
        assert (state["status"], state["live"]) == ("running", True)
        assert state["process"] == f"pid {job.pid} on {host}"
        info = json.loads((run_dir / rundir.RUN_INFO).read_text())
        assert (info["pid"], info["host"]) == (job.pid, host) and info["heartbeat"]
        in_use = f"run directory in use by pid {job.pid} on {host}"
        _assert_usage_error(run_cli("train", "--run-dir", str(run_dir), "--resume"), in_use)
        _assert_usage_error(run_cli("train", "--run-dir", str(run_dir), *_sets()), in_use)
        assert job.process.poll() is None  # the holder was not disturbed
    finally:
        job.process.kill()
    assert job.finish()[0] == -signal.SIGKILL
    (state,) = _runs(run_dir)
    assert (state["status"], state["live"]) == ("interrupted (process gone)", False)

    completed = rundir.latest_checkpoint_epoch(run_dir)
    resumed = run_cli("train", "--run-dir", str(run_dir), "--resume",
                      "--set", f"training.epochs={completed + 1}", check=True)
    assert f"lock: took over {run_dir} from pid {job.pid} on {host} (process gone)" in resumed.stdout
    history = json.loads((run_dir / rundir.HISTORY).read_text())
    assert [row["epoch"] for row in history] == list(range(1, completed + 2))
    (state,) = _runs(run_dir)
    assert (state["status"], state["epochs_completed"], state["epochs"]) == (
        "complete", completed + 1, completed + 1)
    assert json.loads((run_dir / rundir.RUN_INFO).read_text())["resumes"][0]["changed"] == {
        "training.epochs": [60, completed + 1]}
    assert (run_dir / ".lock").read_text() == ""  # released on exit


def test_runs_answers_without_tensorflow_for_a_directory_of_runs(reference, tmp_path):
    listed = _runs(reference.parent)
    assert [(r["status"], r["head"]) for r in listed] == [("complete", "cosine+ln")]
    assert os.path.samefile(listed[0]["path"], reference)
