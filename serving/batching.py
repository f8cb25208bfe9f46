"""Dynamic batching as TF Serving's ``--enable_batching`` does it.

Concurrent Predict calls on the same model, version and signature are merged along the
batch (0th) dimension, run as one call, and each caller gets exactly its own rows back.
The scheduling follows TF Serving's ``SharedBatchScheduler`` and ``BatchingSession``:

- each (model, version, signature) has a queue of batches; a task joins the open batch
  unless that would exceed ``max_batch_size``, which closes it and opens a new one;
- a batch runs when it is full, or when ``batch_timeout_micros`` passed since its first
  task arrived and one of ``num_batch_threads`` threads is free (with a timeout of 0,
  batches form only while every thread is busy);
- a new batch beyond ``max_enqueued_batches`` in a queue is refused with UNAVAILABLE
  ("The batch scheduling queue to which this task was submitted is full");
- a task larger than ``max_batch_size`` is refused with INVALID_ARGUMENT;
- with ``allowed_batch_sizes`` a batch is padded up to the next allowed size with copies
  of the first row of its last task (the padding rows are dropped from the answers);
- with ``pad_variable_length_inputs`` inputs whose non-batch dimensions differ are
  padded to the largest, with each tensor's first value (``batching_util.cc``).

One difference, on purpose: without ``pad_variable_length_inputs`` TF Serving puts
tasks of different non-batch shapes into one batch and then fails the whole batch
("Tensors with name ... have different shapes and padding is turned off"). Here such
tasks go to separate queues (the shapes are part of the queue's key), so no request
fails because of its neighbours.

``BatchingParameters`` reads TF Serving's ``--batching_parameters_file`` (the
``BatchingParameters`` text proto of ``session_bundle_config.proto``) and writes it back
(``tfrs-cosine serving-config``), so one file configures both servers.

Cost: merging copies each input once (``np.concatenate``); splitting returns views.
The scheduler holds one lock per submit and per batch taken.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format

from serving.errors import ServingError
from serving.status import RequestError, invalid
from serving.wire import build_messages

FULL_QUEUE = "The batch scheduling queue to which this task was submitted is full"

# BatchingParameters as in session_bundle_config.proto (not shipped in
# tensorflow-serving-api): the text format of --batching_parameters_file.
_PROTO = build_messages(
    "tfrs_cosine/batching_parameters.proto",
    "tfrs_cosine.config",
    {
        "BatchingParameters": [
            ("max_batch_size", 1, "Int64Value", ""),
            ("batch_timeout_micros", 2, "Int64Value", ""),
            ("max_enqueued_batches", 3, "Int64Value", ""),
            ("num_batch_threads", 4, "Int64Value", ""),
            ("thread_pool_name", 5, "StringValue", ""),
            ("allowed_batch_sizes", 6, "int64", "repeated"),
            ("pad_variable_length_inputs", 7, "bool", ""),
        ]
    },
)
BatchingParametersProto = _PROTO["BatchingParameters"]


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters; defaults are BasicBatchScheduler's."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    thread_pool_name: str = "batch_threads"

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ServingError(f"batching parameter {name} must be >= 1")
        if self.batch_timeout_micros < 0:
            raise ServingError("batching parameter batch_timeout_micros must be >= 0")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ServingError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                raise ServingError(
                    f"final entry in allowed_batch_sizes ({sizes[-1]}) must equal "
                    f"max_batch_size ({self.max_batch_size})"
                )

    @classmethod
    def from_text(cls, text: str, source: str = "batching parameters") -> BatchingParameters:
        """Parses the text proto; ServingError naming the problem."""
        proto = BatchingParametersProto()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as error:
            raise ServingError(f"{source} is not a BatchingParameters text proto: {error}") from None
        values: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads", "thread_pool_name"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = proto.pad_variable_length_inputs
        try:
            return cls(**values)
        except ServingError as error:
            raise ServingError(f"{source}: {error}") from None

    def to_text(self) -> str:
        """The text proto, with every field written (read back by both servers)."""
        lines = [
            f"max_batch_size {{ value: {self.max_batch_size} }}",
            f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
            f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
            f"num_batch_threads {{ value: {self.num_batch_threads} }}",
        ]
        if self.thread_pool_name != "batch_threads":
            lines.append(f'thread_pool_name {{ value: "{self.thread_pool_name}" }}')
        lines += [f"allowed_batch_sizes: {size}" for size in self.allowed_batch_sizes]
        lines.append(f"pad_variable_length_inputs: {str(self.pad_variable_length_inputs).lower()}")
        return "\n".join(lines) + "\n"


def task_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The common 0th dimension of a task's inputs (TF Serving's ComputeTensorBatchSize)."""
    size = None
    for value in inputs.values():
        if value.ndim == 0:
            raise invalid("Batching input tensors must have at least one dimension")
        if size is not None and value.shape[0] != size:
            raise invalid("Batching input tensors must have equal 0th-dimension size")
        size = value.shape[0]
    if size is None:
        raise invalid("Batching needs at least one input tensor")
    return size


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int, enqueued: float):
        self.inputs = inputs
        self.size = size
        self.enqueued = enqueued
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("tasks", "size", "created", "closed", "run")

    def __init__(self, created: float, run: Callable):
        self.tasks: list[_Task] = []
        self.size = 0
        self.created = created
        self.closed = False
        self.run = run


# Per batch: input sizes, processed (padded) size, padding, queueing seconds of each task.
BatchObserver = Callable[[list[int], int, int, list[float]], None]


class BatchScheduler:
    """Queues tasks by key and runs merged batches, at most ``num_batch_threads`` at once.

    ``submit(key, inputs, run)`` blocks until its batch has run and returns the caller's
    rows of ``run(merged inputs)``; ``run`` must map ``{name: (B, ...)}`` to
    ``{name: (B, ...)}`` and raise ``RequestError`` for a bad request.

    The thread whose task opens a batch leads it: it waits until the batch is ready (full,
    or its timeout passed) and one of the ``num_batch_threads`` slots is free, then runs
    it and hands every other task its rows. The scheduling is TF Serving's; running the
    batch on the leader's own thread instead of a dedicated batch thread saves a thread
    switch per batch and per request of the leader, which in Python costs a trip through
    the interpreter lock.
    """

    def __init__(
        self,
        params: BatchingParameters,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.params = params
        self._observer = observer
        self._clock = clock
        self._cond = threading.Condition()
        self._queues: dict[Hashable, collections.deque[_Batch]] = {}
        self._free_slots = params.num_batch_threads
        self._stopped = False

    def queue_key(self, key: Hashable, inputs: Mapping[str, np.ndarray]) -> Hashable:
        """The queue a task joins: ``key``, plus the non-batch shapes unless they are padded."""
        if self.params.pad_variable_length_inputs:
            return key
        return (key, tuple((name, inputs[name].shape[1:]) for name in sorted(inputs)))

    def submit(
        self,
        key: Hashable,
        inputs: Mapping[str, np.ndarray],
        run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        size = task_size(inputs)
        limit = self.params.max_batch_size
        if size > limit:
            raise invalid(f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size, self._clock())
        qkey = self.queue_key(key, inputs)
        with self._cond:
            if self._stopped:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            batches = self._queues.setdefault(qkey, collections.deque())
            batch = batches[-1] if batches and not batches[-1].closed else None
            leader = False
            if batch is None or batch.size + size > limit:
                if batch is not None:
                    batch.closed = True
                    self._cond.notify_all()  # its leader may run it now
                if len(batches) >= self.params.max_enqueued_batches:
                    if not batches:
                        del self._queues[qkey]
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, FULL_QUEUE)
                batch = _Batch(task.enqueued, run)
                batches.append(batch)
                leader = True
            batch.tasks.append(task)
            batch.size += size
            if batch.size >= limit:
                batch.closed = True
                if not leader:
                    self._cond.notify_all()
            if leader:
                self._lead(qkey, batch)
        if leader:
            try:
                self._process(batch)
            finally:
                with self._cond:
                    self._free_slots += 1
                    self._cond.notify_all()
        else:
            task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def _lead(self, qkey: Hashable, batch: _Batch) -> None:
        """Waits (holding the lock, released while waiting) until ``batch`` may run: it is
        first in its queue, full or timed out, and a slot is free; then takes it out."""
        timeout = self.params.batch_timeout_micros / 1e6
        batches = self._queues[qkey]
        while True:
            now = self._clock()
            ready = batch.closed or self._stopped or now - batch.created >= timeout
            if ready and batches[0] is batch and self._free_slots > 0:
                break
            wait = None if ready or batches[0] is not batch else batch.created + timeout - now
            self._cond.wait(wait)
        batch.closed = True
        batches.popleft()
        if batches:
            self._cond.notify_all()  # the next batch of this queue is first now
        else:
            del self._queues[qkey]
        self._free_slots -= 1

    def stop(self, timeout: float = 30.0) -> None:
        """Lets queued batches run (no more waiting for them to fill), then refuses new
        tasks with UNAVAILABLE; returns once nothing is queued or running."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: not self._queues and self._free_slots == self.params.num_batch_threads,
                timeout,
            )

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        started = self._clock()
        try:
            merged, padded = self._merge(tasks)
            outputs = batch.run(merged)
            if self._observer is not None:
                self._observer(
                    [t.size for t in tasks], padded, padded - batch.size,
                    [started - t.enqueued for t in tasks],
                )
            self._split(tasks, outputs, padded)
        except RequestError as error:
            for task in tasks:
                task.error = error
        except Exception as error:  # a bug must fail the batch's requests, not the thread
            failure = RequestError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
            for task in tasks:
                task.error = failure
        finally:
            for task in tasks:
                task.done.set()

    def _merge(self, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], int]:
        size = sum(t.size for t in tasks)
        padded = _round_up(size, self.params.allowed_batch_sizes)
        if len(tasks) == 1 and padded == size:
            return dict(tasks[0].inputs), size
        merged = {}
        for name in tasks[0].inputs:
            parts = [t.inputs[name] for t in tasks]
            if self.params.pad_variable_length_inputs:
                parts = _pad_to_largest(parts)
            if padded > size:
                parts.append(np.repeat(parts[-1][:1], padded - size, axis=0))
            merged[name] = np.concatenate(parts, axis=0)
        return merged, padded

    @staticmethod
    def _split(tasks: list[_Task], outputs: Mapping[str, np.ndarray], padded: int) -> None:
        for value in outputs.values():
            if value.ndim == 0:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions"
                )
            if value.shape[0] != padded:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    "dimension sizes of the input tensors",
                )
        start = 0
        for task in tasks:
            end = start + task.size
            task.outputs = {name: value[start:end] for name, value in outputs.items()}
            start = end


def _round_up(size: int, allowed: tuple[int, ...]) -> int:
    """The smallest allowed batch size >= size (size itself when none is configured)."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def _pad_to_largest(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pads every non-batch dimension to the largest in ``parts`` with each part's first value."""
    rank = parts[0].ndim
    if any(p.ndim != rank for p in parts):
        raise invalid("Batching input tensors with the same name must have the same rank")
    if rank > 6:
        raise invalid("Only tensors with rank from 1 to 6 can be padded.")
    largest = [max(p.shape[d] for p in parts) for d in range(rank)]
    out = []
    for part in parts:
        widths = [(0, 0)] + [(0, largest[d] - part.shape[d]) for d in range(1, rank)]
        if any(after for _, after in widths):
            if part.size == 0:
                raise invalid("Got empty tensor in batch of non-empty tensors.")
            fill = part.reshape(-1)[0]
            padded = np.empty([part.shape[0], *largest[1:]], dtype=part.dtype)
            padded[...] = fill
            padded[tuple(slice(0, s) for s in part.shape)] = part
            part = padded
        out.append(part)
    return out
