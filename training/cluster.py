"""The cluster a ``TF_CONFIG`` names, read and checked without TensorFlow.

``TF_CONFIG`` is TensorFlow's JSON description of a training cluster and of this
process's task in it::

    {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
     "task": {"type": "worker", "index": 0}}

Jobs: ``chief`` (at most one task), ``worker``, ``ps``. Without ``ps`` the cluster
trains with ``MultiWorkerMirroredStrategy`` (synchronous data parallelism: every
``chief`` and ``worker`` task trains; the chief is ``chief`` 0, else ``worker`` 0);
with ``ps`` it trains with ``ParameterServerStrategy`` (the ``chief`` coordinates and
needs at least one ``worker``; ``ps`` tasks hold the variables). ``parse_tf_config``
raises ``InputError`` naming the first problem, so a malformed ``TF_CONFIG`` exits 2
on one line before TensorFlow loads.

``wait_for_peers`` is the start-up rendezvous: TensorFlow's own cluster start waits
forever for a task that never comes up (and holds the GIL while it waits, so no
Python watchdog can interrupt it), hence each task first checks, with plain TCP
connects and a deadline, that the tasks it needs are listening.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from training.errors import ClusterError, InputError

JOBS = ("chief", "worker", "ps")
MULTI_WORKER, PARAMETER_SERVER = "multi_worker", "parameter_server"
PEER_TIMEOUT_SECONDS = 300.0  # start-up rendezvous deadline (train --peer-timeout)
_POLL_SECONDS = 0.25
_HELLO = "tfrs-cosine peer "  # + task name + newline: a trainer's rendezvous greeting

Log = Callable[[str], None]


@dataclass(frozen=True)
class Cluster:
    """``jobs``: job name -> task addresses (``host:port``); this process is task
    ``task_index`` of job ``task_type``."""

    jobs: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def kind(self) -> str:
        return PARAMETER_SERVER if self.jobs.get("ps") else MULTI_WORKER

    @property
    def chief(self) -> tuple[str, int]:
        """The task that writes the run directory."""
        return ("chief", 0) if self.jobs.get("chief") else ("worker", 0)

    @property
    def is_chief(self) -> bool:
        return (self.task_type, self.task_index) == self.chief

    @property
    def trains(self) -> bool:
        """Whether this task runs the training job (else it serves variables or steps:
        a ``ps`` or ``worker`` task of a parameter-server cluster)."""
        return self.kind == MULTI_WORKER or self.task_type == "chief"

    @property
    def num_workers(self) -> int:
        """Tasks that compute steps: ``chief`` + ``worker`` (multi-worker), ``worker`` (ps)."""
        workers = len(self.jobs.get("worker", ()))
        return workers + (len(self.jobs.get("chief", ())) if self.kind == MULTI_WORKER else 0)

    @property
    def worker_id(self) -> int:
        """This task's position among the multi-worker trainers (chief first), as
        TensorFlow numbers input pipelines."""
        offset = len(self.jobs.get("chief", ())) if self.task_type == "worker" else 0
        return offset + self.task_index

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    def name(self, task_type: str | None = None, index: int | None = None) -> str:
        task_type = self.task_type if task_type is None else task_type
        index = self.task_index if index is None else index
        return f"{task_type} {index}"

    def tasks(self) -> list[tuple[str, int, str]]:
        """Every task as ``(type, index, address)``, chief first."""
        return [(job, k, a) for job in JOBS for k, a in enumerate(self.jobs.get(job, ()))]

    def peers_to_wait_for(self) -> list[tuple[str, str]]:
        """``(name, address)`` of the tasks this one needs before it starts TensorFlow's
        cluster: every other trainer (multi-worker), every ps and worker (the
        parameter-server chief); none for a ps or worker task, which serves at once."""
        if self.kind == PARAMETER_SERVER and self.task_type != "chief":
            return []
        return [(self.name(job, k), address) for job, k, address in self.tasks()
                if (job, k) != (self.task_type, self.task_index)]

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self.jobs[j])} {j}" for j in JOBS if self.jobs.get(j))
        role = "the chief" if self.is_chief else ("a trainer" if self.trains else "a server")
        return f"cluster: {sizes}; this is {self.name()} at {self.address} ({role})"

    def record(self) -> dict:
        """What ``run.json`` records about the cluster."""
        return {"kind": self.kind, **{job: len(self.jobs[job]) for job in JOBS if self.jobs.get(job)}}


def tf_config(jobs: Mapping[str, list[str]], task_type: str, task_index: int) -> str:
    """The ``TF_CONFIG`` JSON of one task."""
    return json.dumps({"cluster": {j: list(a) for j, a in jobs.items()},
                       "task": {"type": task_type, "index": task_index}})


def cluster_from_environment(environ: Mapping[str, str] = os.environ) -> Cluster | None:
    """The cluster ``TF_CONFIG`` names, or None when it is unset or empty."""
    text = environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else None


def parse_tf_config(text: str) -> Cluster:
    """Checks a ``TF_CONFIG`` (see the module doc); ``InputError`` names the problem."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InputError("TF_CONFIG must be a JSON object with \"cluster\" and \"task\"")
    cluster, task = value.get("cluster"), value.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise InputError("TF_CONFIG has no \"cluster\" object naming its jobs")
    jobs: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise InputError(f"TF_CONFIG job {job!r} is not supported; jobs: {', '.join(JOBS)}")
        if not isinstance(addresses, list) or not addresses:
            raise InputError(f"TF_CONFIG cluster.{job} must be a non-empty list of HOST:PORT")
        for k, address in enumerate(addresses):
            where = f"cluster.{job}[{k}]"
            _check_address(address, where)
            if address in seen:
                raise InputError(f"TF_CONFIG {where} repeats address {address} of {seen[address]}")
            seen[address] = where
        jobs[job] = tuple(addresses)
    if len(jobs.get("chief", ())) > 1:
        raise InputError(f"TF_CONFIG has {len(jobs['chief'])} chief tasks; at most one")
    if "ps" in jobs and ("chief" not in jobs or "worker" not in jobs):
        raise InputError("TF_CONFIG has ps tasks: a parameter-server cluster needs a chief "
                         "(the coordinator) and at least one worker")
    if "ps" not in jobs and "worker" not in jobs and "chief" not in jobs:
        raise InputError("TF_CONFIG cluster has no chief or worker task")
    if not isinstance(task, dict):
        raise InputError("TF_CONFIG has no \"task\" object (\"type\" and \"index\" of this process)")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise InputError(f"TF_CONFIG task.type {task_type!r} is not a job of its cluster "
                         f"({', '.join(jobs)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[task_type]):
        raise InputError(f"TF_CONFIG task.index {index!r} is not a task of job {task_type!r} "
                         f"(0 to {len(jobs[task_type]) - 1})")
    return Cluster(jobs, task_type, index)


def _check_address(address, where: str) -> None:
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"TF_CONFIG {where} = {address!r} is not HOST:PORT")


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def reachable(address: str, timeout: float = 1.0, hello: bytes = b"") -> bool:
    """Whether a TCP connect to ``address`` succeeds; ``hello`` is sent once connected."""
    try:
        with socket.create_connection(_split_address(address), timeout=timeout) as connection:
            if hello:
                connection.sendall(hello)
            return True
    except OSError:
        return False


def _hello(name: str) -> bytes:
    """What a trainer sends to another trainer's rendezvous port: its own task name."""
    return f"{_HELLO}{name}\n".encode()


def wait_for_peers(
    cluster: Cluster, timeout: float = PEER_TIMEOUT_SECONDS, log: Log = print,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Blocks until every task in ``cluster.peers_to_wait_for()`` accepts a TCP
    connection; returns the seconds waited.

    A multi-worker trainer also listens on its own port meanwhile, and waits until
    each other trainer has connected to it once and named itself: only then can no one
    still be looking for it when it closes the port for TensorFlow's server
    (connections are reset on close, so the port is free at once). A connection that
    does not name a peer (a port scan, a health check, another cluster's task) does
    not count. Raises ``ClusterError`` naming the missing tasks once ``timeout``
    seconds have passed.
    """
    peers = dict(cluster.peers_to_wait_for())
    if not peers:
        return 0.0
    listener, expected, hello = None, set(), b""
    if cluster.kind == MULTI_WORKER:
        port = _split_address(cluster.address)[1]
        try:
            listener = socket.create_server(("", port), backlog=64)
        except OSError as e:
            raise ClusterError(f"cluster: {cluster.name()} cannot listen on port {port}: "
                               f"{e.strerror}") from None
        listener.setblocking(False)
        expected, hello = set(peers), _hello(cluster.name())
    started = clock()
    announced, heard = False, set()
    try:
        while True:
            peers = {name: a for name, a in peers.items()
                     if not reachable(a, _POLL_SECONDS, hello)}
            heard |= _accept_all(listener) & expected
            waited = clock() - started
            if not peers and heard == expected:
                return waited
            if waited >= timeout:
                missing = ", ".join(f"{name} at {a}" for name, a in peers.items()) or (
                    f"{', '.join(sorted(expected - heard))} never connected to "
                    f"{cluster.address}, so")
                raise ClusterError(f"cluster: {missing} not reachable within {timeout:g} s "
                                   f"(train --peer-timeout); is every task of TF_CONFIG running?")
            if not announced:
                log(f"cluster: waiting for {', '.join(peers) or 'the other tasks'} "
                    f"(at most {timeout:g} s)")
                announced = True
            time.sleep(_POLL_SECONDS)  # polling other hosts' ports: no event to wait on
    finally:
        if listener is not None:
            listener.close()


def _accept_all(listener: socket.socket | None) -> set[str]:
    """Accepts and resets every pending connection; returns the task names they sent."""
    names: set[str] = set()
    while listener is not None:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return names
        try:
            connection.settimeout(_POLL_SECONDS)
            data = connection.recv(256)
        except OSError:
            data = b""
        text = data.decode("utf-8", "replace")
        if text.startswith(_HELLO) and text.endswith("\n"):
            names.add(text[len(_HELLO):-1])
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    return names


def serve_until_chief_leaves(
    cluster: Cluster, timeout: float = PEER_TIMEOUT_SECONDS, log: Log = print,
    clock: Callable[[], float] = time.monotonic, poll: float = 2.0, gone_after: int = 3,
) -> None:
    """Returns once the chief of a parameter-server cluster, seen at least once, has
    stopped answering for ``gone_after`` polls in a row (the job is over); raises
    ``ClusterError`` if it is not seen within ``timeout`` seconds. The caller's
    TensorFlow server keeps serving meanwhile (on its own threads)."""
    chief = cluster.jobs["chief"][0]
    started, seen, misses = clock(), False, 0
    while True:
        if reachable(chief, timeout=min(poll, 1.0)):
            seen, misses = True, 0
        elif seen:
            misses += 1
            if misses >= gone_after:
                log(f"cluster: the chief at {chief} has gone; {cluster.name()} stops")
                return
        elif clock() - started >= timeout:
            raise ClusterError(f"cluster: chief at {chief} not reachable within {timeout:g} s "
                               "(train --peer-timeout); is every task of TF_CONFIG running?")
        time.sleep(poll)
