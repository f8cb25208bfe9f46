"""Dynamic batching in process: every caller gets exactly its rows, timeouts fire, a full
queue answers UNAVAILABLE, padding, and the BatchingParameters file both servers read."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching import FULL_QUEUE, BatchingParameters, BatchScheduler
from serving.config import batching_config_text
from serving.errors import ServingError
from serving.status import RequestError


def model(inputs):
    """A row-wise function of its batch: (B,) strings and (B, n) floats -> (B, ...) outputs."""
    ids = inputs["user_id"]
    x = inputs["x"]
    return {
        "echo": ids.copy(),
        "sums": x.sum(axis=1) + np.array([len(i) for i in ids], dtype=np.float64),
        "scaled": x * 2.0,
    }


class Recorder:
    def __init__(self):
        self.batches: list[tuple[list[int], int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, sizes, processed, padding, queued):
        with self.lock:
            self.batches.append((list(sizes), processed, padding))


def test_concurrent_callers_get_their_own_rows_randomized():
    rng = np.random.default_rng(7)
    recorder = Recorder()
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=16, batch_timeout_micros=5000, max_enqueued_batches=1000,
                           num_batch_threads=2),
        observer=recorder,
    )
    callers = 48
    requests = []
    for i in range(callers):
        size = int(rng.integers(1, 9))
        ids = np.array([f"c{i}-r{r}-{'x' * int(rng.integers(0, 5))}".encode() for r in range(size)], dtype=object)
        requests.append({"user_id": ids, "x": rng.standard_normal((size, 3))})
    results: list = [None] * callers
    start = threading.Barrier(callers)

    def call(index):
        start.wait()
        results[index] = scheduler.submit(("m", 1, "serving_default"), requests[index], model)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.stop()
    for request, result in zip(requests, results, strict=True):
        expected = model(request)  # the unbatched call
        assert set(result) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(result[name], expected[name])
    sizes = [size for batch, _, _ in recorder.batches for size in batch]
    assert sorted(sizes) == sorted(len(r["user_id"]) for r in requests)
    assert any(len(batch) > 1 for batch, _, _ in recorder.batches), "nothing was merged"
    assert all(processed <= 16 for _, processed, _ in recorder.batches)


def test_the_timeout_fires_for_a_lone_task():
    recorder = Recorder()
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=64, batch_timeout_micros=20_000, num_batch_threads=1),
        observer=recorder,
    )
    started = time.monotonic()
    out = scheduler.submit("k", {"user_id": np.array([b"a"], dtype=object), "x": np.ones((1, 2))}, model)
    waited = time.monotonic() - started
    scheduler.stop()
    assert out["sums"].tolist() == [3.0]
    assert recorder.batches == [([1], 1, 0)], "it ran alone, not padded"
    assert waited >= 0.019, "it ran before its batch timeout"


def test_a_full_queue_answers_unavailable():
    entered, release = threading.Event(), threading.Event()

    def blocking(inputs):
        entered.set()
        release.wait(30)
        return model(inputs)

    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    )
    task = {"user_id": np.array([b"a"], dtype=object), "x": np.ones((1, 2))}
    answers: list = []
    first = threading.Thread(target=lambda: answers.append(scheduler.submit("k", task, blocking)))
    first.start()
    assert entered.wait(30)  # the only batch thread is busy with the first task
    queued = threading.Thread(target=lambda: answers.append(scheduler.submit("k", task, blocking)))
    queued.start()
    with scheduler._cond:  # every submit notifies: wait until the second task is queued
        assert scheduler._cond.wait_for(lambda: bool(scheduler._queues), timeout=30)
    with pytest.raises(RequestError) as caught:
        scheduler.submit("k", task, blocking)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.message == FULL_QUEUE
    release.set()
    first.join()
    queued.join()
    scheduler.stop()
    assert len(answers) == 2


def test_padding_to_allowed_sizes_and_variable_lengths():
    recorder = Recorder()
    seen = []

    def run(inputs):
        seen.append({k: v.copy() for k, v in inputs.items()})
        return {"n": np.array([len(row) for row in inputs["items"]]), "first": inputs["items"][:, 0]}

    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, allowed_batch_sizes=(4, 8), batch_timeout_micros=0,
                           num_batch_threads=1, pad_variable_length_inputs=True),
        observer=recorder,
    )
    out = scheduler.submit("k", {"items": np.array([[b"a", b"b", b"c"]], dtype=object)}, run)
    assert recorder.batches[-1] == ([1], 4, 3)
    assert seen[-1]["items"].shape == (4, 3) and out["n"].tolist() == [3]
    merged, size = scheduler._merge([
        _task({"items": np.array([[1, 2, 3]], dtype=np.int32)}),
        _task({"items": np.array([[7], [8]], dtype=np.int32)}),
    ])
    assert size == 4
    # pad value: the first value of each task's tensor (batching_util.cc); padding rows copy
    # the first row of the last task
    assert merged["items"].tolist() == [[1, 2, 3], [7, 7, 7], [8, 7, 7], [7, 7, 7]]
    scheduler.stop()


def _task(inputs):
    from serving.batching import _Task

    return _Task(inputs, next(iter(inputs.values())).shape[0], 0.0)


def test_refusals():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=4, num_batch_threads=1))
    with pytest.raises(RequestError, match="Task size 5 is larger than maximum input batch size 4"):
        scheduler.submit("k", {"x": np.ones((5, 1))}, model)
    with pytest.raises(RequestError, match="equal 0th-dimension"):
        scheduler.submit("k", {"x": np.ones((2, 1)), "y": np.ones((3, 1))}, model)
    with pytest.raises(RequestError, match="at least one dimension"):
        scheduler.submit("k", {"x": np.ones(())}, model)

    def broken(_inputs):
        return {"x": np.ones(3)}  # wrong batch size

    with pytest.raises(RequestError, match="0th dimension does not equal") as caught:
        scheduler.submit("k", {"x": np.ones((2, 1))}, broken)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    scheduler.stop()
    with pytest.raises(RequestError) as caught:
        scheduler.submit("k", {"x": np.ones((1, 1))}, model)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_parameters_file_is_tf_servings_format():
    text = """
        # comments and any field order, as text_format allows
        num_batch_threads { value: 3 }
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 1500 }
        max_enqueued_batches { value: 7 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
        thread_pool_name { value: "pool" }
    """
    params = BatchingParameters.from_text(text)
    assert params == BatchingParameters(32, 1500, 7, 3, (8, 32), True, "pool")
    # What serving-config writes reads back to the same parameters (one file, both servers).
    assert BatchingParameters.from_text(batching_config_text(params)) == params
    assert BatchingParameters.from_text("").max_batch_size == 1000  # TF Serving's defaults
    for bad, message in (
        ("max_batch_size: 3", "not a BatchingParameters"),
        ("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4", "increasing"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
    ):
        with pytest.raises(ServingError, match=message):
            BatchingParameters.from_text(bad)
