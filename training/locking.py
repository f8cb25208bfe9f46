"""One process per run directory: a lock, process liveness and a heartbeat.

* **The lock** is ``RUN_DIR/.lock``, held with ``flock(LOCK_EX | LOCK_NB)`` for the
  life of the job. The kernel drops it when the process dies, SIGKILL included, so on
  one host a lock that can be taken is never held by a live process: a dead holder's
  lock is simply taken over (its pid and host, still written in the file, are named in
  the log). A second job on a live directory gets ``InputError("run directory in use
  by pid N on HOST")``.
* **Another host** (a shared file system): ``flock`` may not reach across hosts (NFS
  without lock support, some FUSE mounts). So when the lock could be taken but the
  file names a holder on another host whose heartbeat is younger than
  ``STALE_SECONDS``, the directory is still refused. An older heartbeat means that
  holder is gone.
* **The heartbeat**: a daemon thread rewrites ``heartbeat`` in ``run.json`` every
  ``HEARTBEAT_SECONDS`` (one small JSON file write; it runs while TensorFlow holds no
  Python lock, so data loading and evaluation keep it fresh too).
* **Liveness** without the lock (``tfrs-cosine runs``): on this host, the pid exists
  and started when the run says (``pid_start``, from ``/proc``, so a reused pid is not
  taken for the job); on another host, a fresh heartbeat.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.errors import InputError

LOCK = ".lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(moment: dt.datetime | None = None) -> str:
    return (moment or now()).isoformat(timespec="seconds")


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses.
    return stat.rpartition(")")[2].split()[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and is the one that started at ``start``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if start is not None:
        current = process_start(pid)
        return current is None or current == start
    return True


@dataclass(frozen=True)
class Process:
    """A process that runs (or ran) a job: what ``run.json`` and the lock file record."""

    pid: int
    host: str
    start: str | None = None
    heartbeat: str | None = None

    @classmethod
    def current(cls) -> Process:
        return cls(os.getpid(), this_host(), process_start(os.getpid()), timestamp())

    @classmethod
    def from_record(cls, record: dict) -> Process | None:
        pid, host = record.get("pid"), record.get("host")
        if not isinstance(pid, int) or not isinstance(host, str):
            return None
        return cls(pid, host, record.get("pid_start"), record.get("heartbeat"))

    def record(self) -> dict:
        return {"pid": self.pid, "host": self.host, "pid_start": self.start,
                "heartbeat": self.heartbeat}

    def heartbeat_age(self, at: dt.datetime | None = None) -> float | None:
        """Seconds since the last heartbeat (None when there is none)."""
        if not self.heartbeat:
            return None
        try:
            beat = dt.datetime.fromisoformat(self.heartbeat)
        except ValueError:
            return None
        return ((at or now()) - beat).total_seconds()

    def alive(self, at: dt.datetime | None = None) -> bool:
        if self.host == this_host():
            return process_alive(self.pid, self.start)
        age = self.heartbeat_age(at)
        return age is not None and age < STALE_SECONDS

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


class RunLock:
    """The exclusive lock of a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def acquire(self, log: Callable[[str], None] = print,
                last_seen: Callable[[], dict] = dict) -> None:
        """Takes the lock, or raises ``InputError`` naming the live holder.

        ``last_seen`` returns the directory's ``run.json`` (its heartbeat tells whether a
        holder on another host is alive).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = str(holder) if holder else "another process"
            raise InputError(f"run directory in use by {who}: {self.run_dir}") from None
        try:
            previous = _read_holder(fd)
            if previous is not None and previous.host != this_host():
                seen = Process.from_record(last_seen())
                if seen is not None and (seen.pid, seen.host) == (previous.pid, previous.host):
                    previous = seen  # run.json carries its heartbeat
                if previous.alive():
                    age = previous.heartbeat_age()
                    raise InputError(
                        f"run directory in use by {previous}: {self.run_dir} "
                        f"(heartbeat {age:.0f} s ago; a holder on another host counts as "
                        f"gone after {STALE_SECONDS:.0f} s)"
                    )
            if previous is not None:
                log(f"lock: took over {self.run_dir} from {previous} (process gone)")
            record = Process.current().record() | {"acquired": timestamp()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file (a clean exit leaves nothing to take over) and unlocks."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> Process | None:
    try:
        return Process.from_record(json.loads(os.pread(fd, 4096, 0).decode() or "{}"))
    except (ValueError, UnicodeDecodeError):
        return None


class Heartbeat:
    """Calls ``beat()`` every ``seconds`` from a daemon thread while the block runs."""

    def __init__(self, beat: Callable[[], None], seconds: float = HEARTBEAT_SECONDS):
        self.beat, self.seconds = beat, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 (a full disk or a moved run must not kill the job)
                pass  # the next beat retries

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
