"""Distributed training on TensorFlow's engine, with real processes on loopback.

* ``training.local_replicas=2``: MirroredStrategy over 2 logical CPU devices in one
  process; its metrics are within ``ONE_REPLICA_TOLERANCE`` of the one-device run
  (``cosine_run_dir``, same settings): each replica scores its examples against its
  own half of the batch, so the runs differ, by at most 0.009 in test recall@10 over
  4 seeds measured (``training.train.fit_input`` on both strategies, one process).
* MultiWorkerMirroredStrategy, 2 worker processes (``tfrs-cosine cluster-local``),
  one cluster run for two properties: killing worker 1 after epoch 1 fails the chief
  within ``LOST_PEER_SECONDS`` on one line, the relaunched cluster (``--restarts 1``,
  ``train --auto-resume``) resumes from the chief's checkpoint; then the run, the
  same replicas as the 2 local ones fed the same examples, has the history, weights
  and metrics of the 2-replica run exactly (tolerance 0), written by the chief alone.
* ParameterServerStrategy: chief, 2 workers, 2 ps, TFRecord shards streamed; the
  tables are sharded across both ps; the run exports and the export serves (the
  official gRPC stubs against ``tfrs-cosine serve``).
* A malformed TF_CONFIG exits 2 on one line; a peer that never comes up fails the
  start within ``--peer-timeout``.

Events, not sleeps: each test reads cluster-local's output line by line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, TINY, run_cli, train_tiny
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from export import contract
from serving.process import ServerProcess
from training import rundir
from training.cluster import tf_config
from training.cluster_local import free_ports

ONE_REPLICA_TOLERANCE = 0.03  # |test recall@10 (2 replicas) - (1 replica)|
LOST_PEER_SECONDS = 60  # measured: 7 to 16 s from the kill to the chief's error line
SETS = [arg for setting in TINY for arg in ("--set", setting)]


class ClusterRun:
    """``tfrs-cosine cluster-local ARGS`` read line by line; every task it names is
    killed at ``close`` whatever happened."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 900):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "cluster-local", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.lines: list[str] = []
        self.pids: dict[str, list[int]] = {}
        self._watchdog = threading.Timer(timeout, self.process.kill)
        self._watchdog.start()

    def wait_for(self, pattern: str) -> str:
        """The first line (from now) matching ``pattern``; AssertionError at the end."""
        for line in self.process.stdout:
            self._keep(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines[-60:])}")

    def _keep(self, line: str) -> None:
        self.lines.append(line)
        started = re.match(r"cluster-local: (\w+ \d+): pid (\d+)", line)
        if started:
            self.pids.setdefault(started.group(1), []).append(int(started.group(2)))

    def finish(self) -> int:
        for line in self.process.stdout:
            self._keep(line)
        return self.process.wait()

    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        self._watchdog.cancel()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pids in self.pids.values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cluster_run():
    runs: list[ClusterRun] = []

    def start(*args, **kwargs) -> ClusterRun:
        runs.append(ClusterRun(*args, **kwargs))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(run_dir / rundir.MODEL / "weights"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_training(run_dir: Path, reference: Path) -> None:
    assert _json(run_dir / rundir.HISTORY) == _json(reference / rundir.HISTORY)
    a, b = _weights(run_dir), _weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _json(run_dir / rundir.METRICS)["test"] == _json(reference / rundir.METRICS)["test"]


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory) -> Path:
    """One process, MirroredStrategy over 2 logical CPU devices."""
    return train_tiny(tmp_path_factory.mktemp("mirrored") / "run", "training.local_replicas=2")


def test_two_local_replicas_train_to_complete_near_one_device(mirrored_run, cosine_run_dir):
    info = _json(mirrored_run / rundir.RUN_INFO)
    assert info["status"] == "complete"
    assert info["distribution"] == {"strategy": "mirrored", "replicas": 2}
    two = _json(mirrored_run / rundir.METRICS)["test"]["recall@10"]
    one = _json(cosine_run_dir / rundir.METRICS)["test"]["recall@10"]
    assert abs(two - one) <= ONE_REPLICA_TOLERANCE, (two, one)


def test_two_workers_train_as_two_replicas_only_the_chief_writes_and_a_relaunch_resumes(
    mirrored_run, tmp_path, cluster_run
):
    """One cluster run covers both: killing worker 1 after epoch 1 fails the chief on one
    line; the relaunched cluster resumes and ends exactly as the 2-replica run."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run_dir = tmp_path / "run"
    run = cluster_run("--workers", "2", "--restarts", "1", "--", "train", "--auto-resume",
                      "--run-dir", str(run_dir), *SETS, env={"TMPDIR": str(scratch)})
    run.wait_for(r"^\[worker 0\] epoch 1/3: .*checkpoint saved")
    os.kill(run.pids["worker 1"][0], signal.SIGKILL)
    killed = time.monotonic()
    error = run.wait_for(r"^\[worker 0\] tfrs-cosine: error: ")
    assert time.monotonic() - killed < LOST_PEER_SECONDS
    assert "cluster: lost worker 1 during training" in error and "--auto-resume" in error
    run.wait_for(r"^cluster-local: restarting the cluster \(1 of 1\)")
    run.wait_for(rf"^\[worker 0\] run: resuming {re.escape(str(run_dir))} after epoch 1")
    assert run.finish() == 0, run.output()[-3000:]
    assert len(run.pids["worker 1"]) == 2
    info = _json(run_dir / rundir.RUN_INFO)
    assert info["status"] == "complete" and [r["from_epoch"] for r in info["resumes"]] == [1]
    assert info["pid"] == run.pids["worker 0"][-1]
    assert info["distribution"] == {"strategy": "multi_worker", "replicas": 2,
                                    "cluster": {"kind": "multi_worker", "worker": 2}}
    _assert_same_training(run_dir, mirrored_run)  # tolerance 0: the same replicas
    resumed = run.output().split("cluster-local: restarting the cluster")[1]
    assert (f"[worker 1] run: worker 1 trained 2 epochs; the chief writes {run_dir}"
            in resumed), resumed[-3000:]
    assert "[worker 1] evaluation:" not in run.output()
    assert sorted(p.name for p in (run_dir / rundir.CHECKPOINTS).iterdir() if "ckpt-" in p.name
                  and p.suffix == ".index") == ["ckpt-2.index", "ckpt-3.index"]
    # worker 1's checkpoints went to a scratch directory: the relaunched one removed its
    # own; the SIGKILLed one could not
    assert len(list(scratch.glob("tfrs-cosine-worker-*"))) == 1


def test_parameter_servers_shard_the_tables_and_the_run_exports_and_serves(
    tmp_path, cluster_run
):
    shards = tmp_path / "shards"
    run_cli("data", "write-shards", str(shards), "--rows", "6000", "--users", "300", "--items",
            "80", "--shards", "4", "--format", "tfrecord", check=True)
    run_dir = tmp_path / "run"
    sets = ["data.source=file", f"data.path={shards}", "data.split=hash-interaction",
            "training.epochs=1", "training.batch_size=256", "evaluation.ks=[1, 10]"]
    run = cluster_run("--workers", "2", "--ps", "2", "--", "train", "--run-dir", str(run_dir),
                      *[a for s in sets for a in ("--set", s)])
    line = run.wait_for(r"^\[chief 0\] parameter servers: ")
    assert "user_tower/embedding/embeddings in 2 shards (ps 0, ps 1)" in line, line
    assert run.finish() == 0, run.output()[-3000:]
    for task in ("ps 0", "ps 1", "worker 0", "worker 1"):
        assert f"[{task}] cluster: the chief at " in run.output()  # each stopped on its own
    info = _json(run_dir / rundir.RUN_INFO)
    assert info["status"] == "complete"
    assert info["distribution"]["strategy"] == "parameter_server"

    base = tmp_path / "models" / "ps"
    run_cli("export", str(run_dir), "--model-base-path", str(base), "--index", "brute-force",
            "--k", "10", check=True)
    server = ServerProcess(["--model_name", "ps", "--model_base_path", str(base)],
                           tmp_path / "serve.log")
    try:
        server.wait_available("ps")
        users = (run_dir / "vocab" / "users.txt").read_text().split()
        items = set((run_dir / "vocab" / "items.txt").read_text().split())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ps"
        request.model_spec.signature_name = contract.SERVING_DEFAULT.name
        (user_id,) = contract.SERVING_DEFAULT.input_names
        request.inputs[user_id].CopyFrom(tf.make_tensor_proto(np.array(users[:3], dtype=object)))
        with grpc.insecure_channel(server.target) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=30)
        ids = tf.make_ndarray(reply.outputs[contract.SERVING_DEFAULT.output("item_ids").name])
        scores = tf.make_ndarray(reply.outputs[contract.SERVING_DEFAULT.output("scores").name])
        assert ids.shape == (3, 10) and {i.decode() for i in ids.ravel()} <= items
        assert np.all(np.diff(scores, axis=1) <= 0)
    finally:
        assert server.stop() == 0, server.log()[-2000:]


def _train_with(tf_config_value: str, *args: str, timeout: float = 300):
    env = dict(os.environ, TF_CONFIG=tf_config_value)
    return subprocess.run([sys.executable, "-m", "training.cli", "train", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("value, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG task.index 3 is not a task of job 'worker'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, '
     '"task": {"type": "ps", "index": 0}}', "a parameter-server cluster needs a chief"),
])
def test_a_malformed_tf_config_exits_2_with_one_line(tmp_path, value, message):
    done = _train_with(value, "--run-dir", str(tmp_path / "run"), timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfrs-cosine: error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_peer_that_never_comes_fails_the_start_within_the_deadline(tmp_path):
    jobs = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    started = time.monotonic()
    done = _train_with(tf_config(jobs, "worker", 0), "--run-dir", str(tmp_path / "run"),
                       "--peer-timeout", "3", *SETS)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("tfrs-cosine")]
    assert errors == [f"tfrs-cosine: error: cluster: worker 1 at {jobs['worker'][1]} not "
                      "reachable within 3 s (train --peer-timeout); is every task of "
                      "TF_CONFIG running?"], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
    assert time.monotonic() - started < 120
