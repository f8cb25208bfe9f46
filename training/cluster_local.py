"""``tfrs-cosine cluster-local``: a training cluster of local processes on 127.0.0.1.

    tfrs-cosine cluster-local --workers 2 -- train --run-dir runs/mw ...
    tfrs-cosine cluster-local --workers 2 --ps 1 -- train --run-dir runs/ps ...

starts one ``tfrs-cosine train ARGS`` process per task with its own ``TF_CONFIG`` on
free loopback ports: ``--workers N`` alone is a ``MultiWorkerMirroredStrategy`` cluster
of N workers (worker 0 is the chief); with ``--ps M`` it is a ``ParameterServerStrategy``
cluster of a chief, N workers and M ps. Every line a task prints is echoed with its
task as a prefix (``[worker 1] epoch 2/5: ...``); the first lines name each task's pid
and address.

The chief's exit ends the cluster: the others get ``--grace`` seconds to finish on
their own (multi-worker followers end with the training, ps and worker servers once
the chief is gone), then are stopped. A task that fails stops the cluster the same
way, after giving the chief that long to notice; ``--restarts K`` then starts the
whole cluster again, up to K times, as a Kubernetes Job whose pods restart on failure
would (with ``train --auto-resume`` the new tasks continue from the chief's last
checkpoint). Ctrl-C or SIGTERM stops every task. Stopping is SIGTERM, then SIGKILL
after ``STOP_SECONDS``: every process started is gone when the command returns.
Exit code: the chief's (the last attempt's).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from training.errors import InputError

STOP_SECONDS = 15.0
GRACE_SECONDS = 60.0


@dataclass
class Task:
    type: str
    index: int
    address: str
    process: subprocess.Popen | None = None
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.type} {self.index}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalCluster:
    """One attempt: the task processes, their echoed output, and stopping them."""

    def __init__(self, workers: int, ps: int, command: list[str], verbose: bool = False,
                 out=None):
        jobs = {"chief": 1, "worker": workers, "ps": ps} if ps else {"worker": workers}
        ports = iter(free_ports(sum(jobs.values())))
        self.tasks = [Task(job, k, f"127.0.0.1:{next(ports)}")
                      for job, n in jobs.items() for k in range(n)]
        self.jobs = {job: [t.address for t in self.tasks if t.type == job] for job in jobs}
        self.chief = self.tasks[0]
        self.command = [sys.executable, "-m", "training.cli", *(["--verbose"] if verbose else []),
                        *command]
        self.out = out or sys.stdout
        self._print_lock = threading.Lock()
        self.ended: queue.Queue[Task] = queue.Queue()

    def say(self, line: str) -> None:
        with self._print_lock:
            print(line, file=self.out, flush=True)

    def start(self) -> None:
        from training.cluster import tf_config

        for task in reversed(self.tasks):  # servers first, the chief last
            env = dict(os.environ, TF_CONFIG=tf_config(self.jobs, task.type, task.index),
                       PYTHONUNBUFFERED="1")
            task.process = subprocess.Popen(
                self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1, start_new_session=True,
            )
            self.say(f"cluster-local: {task.name}: pid {task.process.pid} at {task.address}")
            task.pump = threading.Thread(target=self._pump, args=(task,), daemon=True)
            task.pump.start()

    def _pump(self, task: Task) -> None:
        for line in task.process.stdout:
            self.say(f"[{task.name}] {line.rstrip()}")
        task.process.wait()
        self.ended.put(task)

    def alive(self) -> list[Task]:
        return [t for t in self.tasks if t.process is not None and t.process.poll() is None]

    def wait(self, grace: float) -> int:
        """Waits for the chief (see the module doc); returns its exit code."""
        pending = {id(t) for t in self.tasks}
        failed: Task | None = None
        deadline = float("inf")
        while pending:
            try:
                task = self.ended.get(timeout=max(min(deadline - time.monotonic(), 1e6), 0))
            except queue.Empty:
                break  # the grace period is over
            pending.discard(id(task))
            code = task.process.returncode
            self.say(f"cluster-local: {task.name} exited with code {code}")
            if task is self.chief:
                deadline = min(deadline, time.monotonic() + grace)
            elif code != 0 and failed is None:
                failed = task
                deadline = min(deadline, time.monotonic() + grace)
                self.say(f"cluster-local: {task.name} failed; the cluster stops within "
                         f"{grace:g} s")
        self.stop()
        chief = self.chief.process.returncode
        if chief == 0 and failed is not None:
            return failed.process.returncode or 1
        return chief

    def stop(self) -> None:
        """SIGTERM to every live task, SIGKILL after ``STOP_SECONDS``; reaps all."""
        for task in self.alive():
            _signal(task, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for task in self.tasks:
            if task.process is None:
                continue
            try:
                task.process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self.say(f"cluster-local: {task.name} ignored SIGTERM; killing it")
                _signal(task, signal.SIGKILL)
                task.process.wait()
        for task in self.tasks:
            if task.pump is not None:
                task.pump.join()


def _signal(task: Task, signum: int) -> None:
    try:
        task.process.send_signal(signum)
    except ProcessLookupError:
        pass


def run(workers: int, ps: int, command: list[str], restarts: int = 0,
        grace: float = GRACE_SECONDS, verbose: bool = False) -> int:
    """Runs the cluster, restarting it after a failure up to ``restarts`` times."""
    from training.interrupts import signals_raise

    code = 1
    for attempt in range(restarts + 1):
        cluster = LocalCluster(workers, ps, command, verbose)
        try:
            with signals_raise():
                cluster.start()
                code = cluster.wait(grace)
        except KeyboardInterrupt:
            cluster.say("cluster-local: interrupted; stopping every task")
            cluster.stop()
            raise
        if code in (0, 2):  # done, or bad input (the same command would fail again)
            return code
        if attempt < restarts:
            cluster.say(f"cluster-local: restarting the cluster ({attempt + 1} of {restarts})")
    return code


def _cluster_local(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command or command[0] != "train":
        raise InputError("cluster-local runs `train`: cluster-local --workers N [--ps M] -- "
                         f"train ARGS (got {' '.join(command) or 'nothing'})")
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.ps < 0 or args.restarts < 0:
        raise InputError("--ps and --restarts must be >= 0")
    return run(args.workers, args.ps, command, args.restarts, args.grace, args.verbose)


def register(commands) -> None:
    p = commands.add_parser(
        "cluster-local", help="run `train` as a local TF_CONFIG cluster (loopback, free ports)",
        description="Starts one `tfrs-cosine train ARGS` per task with its own TF_CONFIG "
                    "on free 127.0.0.1 ports, echoes each task's lines with its name, and "
                    "stops every process it started when the chief ends (or on Ctrl-C).",
    )
    p.add_argument("--workers", type=int, required=True, help="worker tasks")
    p.add_argument("--ps", type=int, default=0,
                   help="parameter-server tasks (0: MultiWorkerMirroredStrategy)")
    p.add_argument("--restarts", type=int, default=0,
                   help="start the whole cluster again after a failure, up to this many times")
    p.add_argument("--grace", type=float, default=GRACE_SECONDS,
                   help="seconds the other tasks get to end after the chief (or a failure)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train ARGS...")
    p.set_defaults(func=_cluster_local)
