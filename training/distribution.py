"""The job's ``tf.distribute`` strategy, created before any other TensorFlow op.

``start_distribution(config, cluster)`` picks it:

* no ``TF_CONFIG`` (``cluster`` None): ``training.local_replicas`` = 0 uses every local
  GPU through ``MirroredStrategy`` when there is more than one, else the default
  strategy (one device); N > 1 mirrors over N GPUs, or over N logical CPU devices
  when there is no GPU (so the multi-replica path runs on CPU);
* a cluster of ``chief``/``worker`` tasks: ``MultiWorkerMirroredStrategy`` (each task
  uses its local GPUs, else its CPU);
* a cluster with ``ps`` tasks: the chief coordinates ``ParameterServerStrategy``, whose
  variables are sharded across the ps by ``MinSizePartitioner`` (variables above
  ``MIN_SHARD_BYTES`` are split in up to one shard per ps: the embedding tables, their
  optimizer slots); ``ps`` and ``worker`` tasks only run a TensorFlow server
  (``serve_task``).

Before TensorFlow starts its cluster, ``training.cluster.wait_for_peers`` checks that
the other tasks are up, with a deadline. Logical CPU devices, collective ops and the
coordination service can only be configured before TensorFlow's runtime starts,
hence "first": ``training.train.train`` calls this before reading any data.

Under a synchronous strategy ``training.batch_size`` is the global batch: each of the
``replicas`` replicas gets ``batch_size / replicas`` examples per step and scores them
against its own in-batch negatives (the logQ correction uses the global item
frequencies, so it is unchanged); the gradients are summed across replicas, the sum
the single-device loss (a sum over examples) would give on the same examples.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from training.cluster import (
    MULTI_WORKER,
    PARAMETER_SERVER,
    PEER_TIMEOUT_SECONDS,
    Cluster,
    reachable,
    serve_until_chief_leaves,
    wait_for_peers,
)
from training.errors import ClusterError, InputError

MIN_SHARD_BYTES = 16 << 10
ONE_DEVICE, MIRRORED, SERVER = "one_device", "mirrored", "server"
Log = Callable[[str], None]


@dataclass
class Distribution:
    """The strategy of this process and its place in the job.

    ``kind``: ``one_device``, ``mirrored`` (local replicas), ``multi_worker``,
    ``parameter_server`` (this process coordinates) or ``server`` (a ps or worker task
    of a parameter-server cluster: no strategy, it only serves).
    """

    strategy: tf.distribute.Strategy | None
    kind: str
    cluster: Cluster | None = None

    @property
    def trains(self) -> bool:
        return self.kind != SERVER

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def synchronous(self) -> bool:
        return self.kind in (ONE_DEVICE, MIRRORED, MULTI_WORKER)

    @property
    def replicas(self) -> int:
        """Replicas in sync (1 under ``ParameterServerStrategy``: each worker step is a
        batch of its own)."""
        return self.strategy.num_replicas_in_sync if self.synchronous else 1

    @property
    def num_pipelines(self) -> int:
        """Input pipelines: one per multi-worker task or parameter-server worker."""
        return self.cluster.num_workers if self.cluster is not None else 1

    @property
    def pipeline_id(self) -> int:
        """This process's input pipeline (multi-worker); 0 otherwise."""
        return self.cluster.worker_id if self.kind == MULTI_WORKER else 0

    @property
    def replicas_per_pipeline(self) -> int:
        return self.replicas // self.num_pipelines if self.synchronous else 1

    def per_replica_batch(self, batch_size: int) -> int:
        """``training.batch_size`` split evenly across the replicas in sync."""
        if batch_size % self.replicas:
            raise InputError(f"training.batch_size {batch_size} is not a multiple of the "
                             f"{self.replicas} replicas in sync")
        return batch_size // self.replicas

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        names = {ONE_DEVICE: "one device (default strategy)",
                 MIRRORED: "MirroredStrategy", MULTI_WORKER: "MultiWorkerMirroredStrategy",
                 PARAMETER_SERVER: "ParameterServerStrategy", SERVER: "a server task"}
        text = f"distribution: {names[self.kind]}"
        if self.kind in (MIRRORED, MULTI_WORKER):
            devices = self.strategy.extended.worker_devices
            text += f", {self.replicas} replicas in sync ({', '.join(devices)})"
        if self.kind == PARAMETER_SERVER:
            text += (f", {len(self.cluster.jobs['worker'])} workers, "
                     f"{len(self.cluster.jobs['ps'])} ps; tables sharded by MinSizePartitioner "
                     f"(>= {MIN_SHARD_BYTES // 1024} KiB per shard)")
        return text

    def describe_shards(self, model: tf.keras.Model) -> str | None:
        """Under ``ParameterServerStrategy``: which ps holds each variable's shards."""
        if self.kind != PARAMETER_SERVER:
            return None
        shards: dict[str, list[str]] = {}
        for variable in model.trainable_variables:
            base, part, _ = variable.name.rpartition("/part_")
            if part:
                task = re.search(r"/job:ps/replica:\d+/task:(\d+)", variable.device)
                shards.setdefault(base.split("/", 1)[-1], []).append(
                    f"ps {task.group(1)}" if task else variable.device)
        if not shards:
            return "parameter servers: no variable is large enough to shard"
        return "parameter servers: " + "; ".join(
            f"{name} in {len(tasks)} shards ({', '.join(sorted(tasks))})"
            for name, tasks in shards.items())

    def record(self) -> dict:
        """What ``run.json`` records (a resumed run must keep ``replicas``)."""
        record = {"strategy": self.kind, "replicas": self.replicas}
        if self.cluster is not None:
            record["cluster"] = self.cluster.record()
        return record


def start_distribution(
    config, cluster: Cluster | None, log: Log = print,
    peer_timeout: float = PEER_TIMEOUT_SECONDS,
) -> Distribution:
    """The strategy for ``config`` and the ``TF_CONFIG`` cluster (see the module doc).

    Call it before any other TensorFlow op. Raises ``InputError`` for a replica count
    this machine cannot give, ``ClusterError`` when a task is unreachable.
    """
    if cluster is None:
        return _local(config.training.local_replicas)
    if config.training.local_replicas > 1:
        raise InputError(
            f"training.local_replicas = {config.training.local_replicas} applies to one "
            "process; under TF_CONFIG each task mirrors over its own GPUs (set it to 0)"
        )
    log(cluster.describe())
    if not cluster.trains:
        return Distribution(None, SERVER, cluster)
    waited = wait_for_peers(cluster, peer_timeout, log)
    if waited > 1:
        log(f"cluster: every task reachable after {waited:.1f} s")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if cluster.kind == MULTI_WORKER:
        return Distribution(tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver),
                            MULTI_WORKER, cluster)
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=len(cluster.jobs["ps"])
    )
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    tf.get_logger().addFilter(_KnownWarnings())
    return Distribution(strategy, PARAMETER_SERVER, cluster)


class _KnownWarnings(logging.Filter):
    """Drops two warnings every parameter-server epoch repeats: Keras logs the last
    step's loss (documented), and the coordinator retraces its checkpoint save."""

    KNOWN = ("Could not get Model metric results", "MultiDeviceSaver.save")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.KNOWN)


def _local(replicas: int) -> Distribution:
    gpus = tf.config.list_physical_devices("GPU")
    if replicas == 0:
        if len(gpus) > 1:
            return Distribution(tf.distribute.MirroredStrategy(), MIRRORED)
        return Distribution(tf.distribute.get_strategy(), ONE_DEVICE)
    if replicas == 1:
        return Distribution(tf.distribute.get_strategy(), ONE_DEVICE)
    if gpus:
        if len(gpus) < replicas:
            raise InputError(f"training.local_replicas = {replicas} but this machine has "
                             f"{len(gpus)} GPU(s)")
        return Distribution(tf.distribute.MirroredStrategy([f"/gpu:{k}" for k in range(replicas)]),
                            MIRRORED)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError:  # the runtime already started: usable if it has the devices
        if len(tf.config.list_logical_devices("CPU")) < replicas:
            raise InputError(
                f"training.local_replicas = {replicas} needs {replicas} logical CPU devices, "
                "configured before TensorFlow runs its first op; this process already ran one"
            ) from None
    return Distribution(tf.distribute.MirroredStrategy([f"/cpu:{k}" for k in range(replicas)]),
                        MIRRORED)


def serve_task(distribution: Distribution, peer_timeout: float = PEER_TIMEOUT_SECONDS,
               log: Log = print) -> None:
    """Runs a ps or worker task of a parameter-server cluster: a TensorFlow server until
    the chief has come and gone (``training.cluster.serve_until_chief_leaves``)."""
    cluster = distribution.cluster
    server = tf.distribute.Server(
        tf.train.ClusterSpec({job: list(tasks) for job, tasks in cluster.jobs.items()}),
        job_name=cluster.task_type, task_index=cluster.task_index, protocol="grpc", start=True,
    )
    log(f"cluster: {cluster.name()} serving at {server.target}")
    serve_until_chief_leaves(cluster, peer_timeout, log)


class ClusterWatch:
    """For the parameter-server chief: fails the job when no worker, or a ps, has been
    reachable for ``timeout`` seconds.

    ``ClusterCoordinator`` tolerates lost workers by waiting for them (up to an hour
    each) and rescheduling their steps; with every worker gone that is a silent hang.
    A thread checks the tasks every ``poll`` seconds; on failure it calls
    ``on_failure(message)`` (which marks the run) and ends the process with exit code
    1, because the coordinator's waits cannot be interrupted from Python.
    """

    def __init__(self, cluster: Cluster, timeout: float, on_failure: Callable[[str], None],
                 poll: float = 5.0):
        self.cluster, self.timeout, self.on_failure, self.poll = cluster, timeout, on_failure, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)

    def _problem(self) -> str | None:
        ps = [a for a in self.cluster.jobs["ps"] if not reachable(a)]
        if ps:
            return f"ps at {', '.join(ps)} unreachable"
        if not any(reachable(a) for a in self.cluster.jobs["worker"]):
            return "no worker reachable"
        return None

    def _run(self) -> None:
        since = None
        while not self._stop.wait(self.poll):
            problem = self._problem()
            if problem is None:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.timeout:
                message = (f"cluster: {problem} for {self.timeout:g} s; relaunch the cluster "
                           "(train --auto-resume continues from the last checkpoint)")
                with contextlib.suppress(Exception):
                    self.on_failure(message)
                print(f"tfrs-cosine: error: {message}", flush=True, file=sys.stderr)
                os._exit(ClusterError.exit_code)

    def __enter__(self) -> ClusterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


_REASONS = ("stopped sending heartbeats", "socket closed", "connection reset",
            "connection refused", "failed to connect", "deadline exceeded")


def cluster_failure(error: tf.errors.OpError, cluster: Cluster) -> ClusterError:
    """A lost peer (``UnavailableError``...) as one line naming the task and why."""
    text = error.message
    reason = next((r for r in _REASONS if r in text.lower()), type(error).__name__)
    named = {f"{job} {index}" for job, index in
             re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", text)}
    lost = ", ".join(sorted(named - {cluster.name()})) or "a task"
    return ClusterError(
        f"cluster: lost {lost} during training ({reason}); relaunch every task "
        "(train --auto-resume continues from the last checkpoint)"
    )
