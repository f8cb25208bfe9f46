"""Serving end to end: real exports, a real server subprocess, the official stubs and HTTP.

The exports are made by the real exporter (``export.export_savedmodel``) from
tiny trained runs (conftest's ``cosine_run_dir`` and ``dot_run_dir``). The server runs as
``python -m training.cli serve`` on free loopback ports and is driven only through
``tensorflow_serving.apis`` stubs and plain HTTP (urllib).

When ``tensorflow_model_server`` is on PATH (or ``TF_SERVING_BIN`` names it), the client
tests in ``TestClientProtocol`` also run against it with the portable (brute-force)
export; otherwise that half is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.client import RecommenderClient, RestRecommenderClient
from serving.errors import ServingError

ROOT = Path(__file__).resolve().parents[2]
K = 10
MAX_BATCH = 64
SIGNATURES = {"serving_default", "explain", "similar_items", "embed_users", "embed_items"}
TF_SERVING_BIN = os.environ.get("TF_SERVING_BIN") or shutil.which("tensorflow_model_server")


# ------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export(specs: list[tuple[Path, Path, int, str]]) -> None:
    """Runs the real exporter in a fresh process: (run_dir, base_path, version, index)."""
    code = "\n".join(
        ["from export import ExportOptions, export_savedmodel"]
        + [
            f"export_savedmodel({str(run)!r}, {str(base)!r}, "
            f"ExportOptions(version={version}, index={index!r}, k={K}), log=lambda m: None)"
            for run, base, version, index in specs
        ]
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


class Server:
    """A model server subprocess on free loopback ports, with its log file."""

    def __init__(self, command: list[str], grpc_port: int, rest_port: int, log: Path):
        self.grpc_port, self.rest_port, self.log_path = grpc_port, rest_port, log
        self.target = f"127.0.0.1:{grpc_port}"
        self.rest = f"http://127.0.0.1:{rest_port}"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.channel = grpc.insecure_channel(self.target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_available(self, model: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                states = self.model_stub.GetModelStatus(request, timeout=2).model_version_status
                if any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in states):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"model {model} not AVAILABLE in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_own_server(args: list[str], log: Path) -> Server:
    grpc_port, rest_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "training.cli", "serve", "--port", str(grpc_port),
        "--rest_api_port", str(rest_port), *args,
    ]
    return Server(command, grpc_port, rest_port, log)


def predict_request(model: str, signature: str, **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def http(method: str, url: str, body: bytes | str | dict | None = None) -> tuple[int, dict]:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


def users_of(run_dir: Path) -> list[str]:
    return (run_dir / "vocab" / "users.txt").read_text().split("\n")[:5]


def items_of(run_dir: Path) -> list[str]:
    return (run_dir / "vocab" / "items.txt").read_text().split("\n")[:5]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def exports(tmp_path_factory, cosine_run_dir, dot_run_dir) -> dict[str, Path]:
    """Fresh exports: cosine with ScaNN and dot brute-force (both version 1)."""
    base = tmp_path_factory.mktemp("models")
    paths = {"cosine": base / "cosine", "dot": base / "dot"}
    export([(cosine_run_dir, paths["cosine"], 1, "scann"), (dot_run_dir, paths["dot"], 1, "brute-force")])
    return paths


@pytest.fixture(scope="module", params=["tfrs-cosine serve", "tensorflow_model_server"])
def server(request, exports, cosine_run_dir, tmp_path_factory):
    """The server under test, model "recsys" (cosine) version 1, batches capped at 64."""
    logs = tmp_path_factory.mktemp("logs")
    if request.param == "tfrs-cosine serve":
        config = model_server_config_pb2.ModelServerConfig()
        for name, path in (("recsys", exports["cosine"]), ("dotmodel", exports["dot"])):
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path, entry.model_platform = name, str(path), "tensorflow"
        config_file = logs / "models.config"
        config_file.write_text(text_format.MessageToString(config))
        srv = start_own_server(
            ["--model_config_file", str(config_file), "--max_batch_size", str(MAX_BATCH),
             "--max_request_bytes", str(1 << 20), "--verbose"],
            logs / "own.log",
        )
    else:
        if not TF_SERVING_BIN:
            pytest.skip("tensorflow_model_server is not on PATH and TF_SERVING_BIN is not set")
        portable = tmp_path_factory.mktemp("portable") / "recsys"
        export([(cosine_run_dir, portable, 1, "brute-force")])
        from serving.config import BatchingOptions, write_serving_configs

        written = write_serving_configs(portable, logs, "recsys", batching=BatchingOptions(MAX_BATCH))
        grpc_port, rest_port = free_port(), free_port()
        srv = Server(
            [TF_SERVING_BIN, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             f"--model_config_file={written['models.config']}", "--enable_batching",
             f"--batching_parameters_file={written['batching.config']}"],
            grpc_port, rest_port, logs / "tf_serving.log",
        )
    srv.kind = request.param
    try:
        srv.wait_available("recsys")
        yield srv
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ protocol


class TestClientProtocol:
    """The same checks against tfrs-cosine serve and (when present) tensorflow_model_server."""

    def test_predict_every_signature(self, server, cosine_run_dir):
        users = users_of(cosine_run_dir)[:2] + ["no-such-user"]
        items = items_of(cosine_run_dir)
        stub = server.predict_stub

        response = stub.Predict(predict_request("recsys", "serving_default", user_id=users), 30)
        assert response.model_spec.version.value == 1
        out = outputs_of(response)
        assert out["item_ids"].shape == (3, K) and out["scores"].shape == (3, K)
        assert out["known_user"].tolist() == [True, True, False]
        assert np.all(np.diff(out["scores"], axis=1) <= 1e-6), "scores are not ordered"
        assert all(len(set(row)) == K for row in out["item_ids"].tolist())

        top = out["item_ids"][:1]
        why = outputs_of(
            stub.Predict(predict_request("recsys", "explain", user_id=users[:1], item_ids=top), 30)
        )
        assert why["cosine"].shape == (1, K) and why["top_dimensions"].dtype == np.int32
        assert why["known_items"].all() and why["known_user"].tolist() == [True]
        assert why["cosine_is_training_objective"].tolist() == [True]
        # The cosine head ranks by cosine: explain's cosine is the recommendation score.
        np.testing.assert_allclose(why["cosine"][0], out["scores"][0], atol=1e-4)

        embeddings = {}
        for signature, key, ids in (("embed_users", "user_id", users[:1]), ("embed_items", "item_id", top[0])):
            emb = outputs_of(stub.Predict(predict_request("recsys", signature, **{key: ids}), 30))
            embeddings[signature] = emb["embeddings"]
        u, v = embeddings["embed_users"], embeddings["embed_items"]
        cosine = (v @ u[0]) / (np.linalg.norm(v, axis=1) * np.linalg.norm(u[0]))
        np.testing.assert_allclose(cosine, why["cosine"][0], atol=1e-4)

        similar = outputs_of(
            stub.Predict(predict_request("recsys", "similar_items", item_id=items[:2]), 30)
        )
        assert similar["item_ids"].shape == (2, K) and similar["known_item"].all()
        for item, row in zip(items[:2], similar["item_ids"].tolist(), strict=True):
            assert item.encode() not in row, "an item is not its own neighbour"

    def test_metadata_lists_signatures_with_dtypes(self, server):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "recsys"
        response = server.predict_stub.GetModelMetadata(request, 30)
        assert response.model_spec.version.value == 1
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signature_map)
        defs = signature_map.signature_def
        assert SIGNATURES <= set(defs)

        def dtype(signature, kind, name):
            return tf.dtypes.as_dtype(getattr(defs[signature], kind)[name].dtype).name

        def shape(signature, kind, name):
            return [d.size for d in getattr(defs[signature], kind)[name].tensor_shape.dim]

        assert dtype("serving_default", "inputs", "user_id") == "string"
        assert shape("serving_default", "inputs", "user_id") == [-1]
        assert dtype("serving_default", "outputs", "item_ids") == "string"
        assert shape("serving_default", "outputs", "scores") == [-1, K]
        assert dtype("serving_default", "outputs", "known_user") == "bool"
        assert dtype("explain", "outputs", "top_dimensions") == "int32"
        assert len(shape("explain", "outputs", "contributions")) == 3
        assert dtype("explain", "outputs", "cosine_is_training_objective") == "bool"
        assert dtype("similar_items", "outputs", "cosine") == "float32"

        status, body = http("GET", f"{server.rest}/v1/models/recsys/metadata")
        assert status == 200
        rest_defs = body["metadata"]["signature_def"]["signature_def"]
        assert set(rest_defs) == set(defs)
        assert rest_defs["serving_default"]["inputs"]["user_id"]["dtype"] == "DT_STRING"

    def test_status_available(self, server):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "recsys"
        (entry,) = server.model_stub.GetModelStatus(request, 30).model_version_status
        assert entry.version == 1
        assert entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert entry.status.error_code == 0
        status, body = http("GET", f"{server.rest}/v1/models/recsys")
        assert status == 200
        assert body["model_version_status"][0]["state"] == "AVAILABLE"
        assert body["model_version_status"][0]["version"] == "1"

    def test_rest_row_and_columnar_equal_grpc(self, server, cosine_run_dir):
        users = users_of(cosine_run_dir)[:3]
        url = f"{server.rest}/v1/models/recsys:predict"
        grpc_out = outputs_of(
            server.predict_stub.Predict(predict_request("recsys", "serving_default", user_id=users), 30)
        )
        status, row = http("POST", url, {"instances": users})
        assert status == 200, row
        status, col = http("POST", url, {"signature_name": "serving_default", "inputs": {"user_id": users}})
        assert status == 200, col
        assert [r["item_ids"] for r in row["predictions"]] == grpc_out["item_ids"].astype(str).tolist()
        assert col["outputs"]["item_ids"] == grpc_out["item_ids"].astype(str).tolist()
        np.testing.assert_array_equal(
            np.array([r["scores"] for r in row["predictions"]], np.float32), grpc_out["scores"]
        )
        np.testing.assert_array_equal(np.array(col["outputs"]["scores"], np.float32), grpc_out["scores"])
        assert col["outputs"]["known_user"] == grpc_out["known_user"].tolist()

        items = grpc_out["item_ids"][:, :4].astype(str).tolist()
        explain = outputs_of(
            server.predict_stub.Predict(
                predict_request("recsys", "explain", user_id=users, item_ids=items), 30
            )
        )
        status, row = http(
            "POST", url,
            {"signature_name": "explain",
             "instances": [{"user_id": u, "item_ids": i} for u, i in zip(users, items, strict=True)]},
        )
        assert status == 200, row
        for key in ("cosine", "dot", "contributions", "item_norms"):
            np.testing.assert_array_equal(
                np.array([r[key] for r in row["predictions"]], np.float32), explain[key]
            )
        assert [r["top_dimensions"] for r in row["predictions"]] == explain["top_dimensions"].tolist()

    def test_bad_requests_get_the_right_codes(self, server, cosine_run_dir):
        user = users_of(cosine_run_dir)[0]
        stub = server.predict_stub
        cases = {
            "unknown model": (predict_request("nope", "serving_default", user_id=[user]),
                              grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
            "unknown signature": (predict_request("recsys", "nope", user_id=[user]),
                                  grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
            "missing input": (predict_request("recsys", "explain", user_id=[user]),
                              grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {item_ids}"),
            "wrong dtype": (predict_request("recsys", "serving_default", user_id=np.array([1], np.int64)),
                            grpc.StatusCode.INVALID_ARGUMENT, ""),
            "wrong rank": (predict_request("recsys", "serving_default", user_id=[[user]]),
                           grpc.StatusCode.INVALID_ARGUMENT, ""),
            "oversized batch": (predict_request("recsys", "serving_default", user_id=[user] * (MAX_BATCH + 1)),
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"),
        }
        unknown_version = predict_request("recsys", "serving_default", user_id=[user])
        unknown_version.model_spec.version.value = 99
        cases["unknown version"] = (unknown_version, grpc.StatusCode.NOT_FOUND, "Specific(recsys, 99)")
        good = predict_request("recsys", "serving_default", user_id=[user])
        for what, (request, code, message) in cases.items():
            error = rpc_error(stub.Predict, request)
            assert error.code() == code, f"{what}: {error.code()} {error.details()}"
            assert message in error.details(), f"{what}: {error.details()}"
            assert stub.Predict(good, 30).outputs["item_ids"].tensor_shape.dim[1].size == K

        url = f"{server.rest}/v1/models"
        rest_cases = {
            "unknown model": ("/nope:predict", {"instances": [user]}, 404),
            "unknown version": ("/recsys/versions/99:predict", {"instances": [user]}, 404),
            "unknown signature": (":predict", {"signature_name": "nope", "instances": [user]}, 400),
            "missing input": (":predict", {"signature_name": "explain", "inputs": {"user_id": [user]}}, 400),
            "wrong dtype": (":predict", {"instances": [1]}, 400),
            "oversized batch": (":predict", {"instances": [user] * (MAX_BATCH + 1)}, 400),
            "malformed JSON": (":predict", '{"instances": [', 400),
            "no instances": (":predict", {"signature_name": "serving_default"}, 400),
            "both formats": (":predict", {"instances": [user], "inputs": [user]}, 400),
            "ragged": (":predict", {"signature_name": "explain",
                                    "inputs": {"user_id": [user], "item_ids": [["a", "b"], ["c"]]}}, 400),
        }
        for what, (path, body, expected) in rest_cases.items():
            status, answer = http("POST", url + path, body)
            assert status == expected, f"{what}: {status} {answer}"
            assert isinstance(answer.get("error"), str) and answer["error"], what
            status, _ = http("POST", url + "/recsys:predict", {"instances": [user]})
            assert status == 200
        assert http("GET", url + "/nope")[0] == 404

    def test_output_filter_and_version(self, server, cosine_run_dir):
        request = predict_request("recsys", "serving_default", user_id=users_of(cosine_run_dir)[:1])
        request.output_filter.append("scores")
        request.model_spec.version.value = 1
        response = server.predict_stub.Predict(request, 30)
        assert set(response.outputs) == {"scores"} and response.model_spec.version.value == 1
        request.output_filter.append("nope")
        assert rpc_error(server.predict_stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_clients(self, server, cosine_run_dir):
        users = users_of(cosine_run_dir)[:2]
        with RecommenderClient(server.target, "recsys", timeout=30) as client:
            grpc_result = client.recommend(users)
            assert grpc_result.model_version == 1
            assert grpc_result["item_ids"].shape == (2, K)
            assert isinstance(grpc_result["item_ids"][0, 0], str)
            why = client.explain(users[0], list(grpc_result["item_ids"][0, :3]))
            assert why["cosine"].shape == (3,) and bool(why["cosine_is_training_objective"])
            assert client.similar_items(items_of(cosine_run_dir)[0])["cosine"].shape == (1, K)
            assert client.embed_users(users).shape[0] == 2
            assert SIGNATURES <= set(client.metadata())
            assert [(s.version, s.state) for s in client.status()] == [(1, "AVAILABLE")]
        rest = RestRecommenderClient(server.rest, "recsys", timeout=30)
        rest_result = rest.recommend(users)
        assert rest_result["item_ids"].tolist() == grpc_result["item_ids"].tolist()
        np.testing.assert_array_equal(rest_result["scores"], grpc_result["scores"])
        assert [(s.version, s.state) for s in rest.status()] == [(1, "AVAILABLE")]
        assert rest.metadata()["serving_default"].outputs["scores"].dtype == "float32"
        for bad in (RecommenderClient(server.target, "nope"), RestRecommenderClient(server.rest, "nope")):
            with pytest.raises(ServingError) as caught:
                bad.recommend(users)
            assert caught.value.code == "NOT_FOUND" and "nope" in str(caught.value)


# ------------------------------------------------------------------------------ own server only


def own(server) -> None:
    if server.kind != "tfrs-cosine serve":
        pytest.skip("checks specific to tfrs-cosine serve")


class _CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self):
        self.calls = 0

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.calls += 1
        return continuation(client_call_details, request)


def test_client_retries_unavailable_only(server, cosine_run_dir):
    own(server)
    dead = _CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{free_port()}"), dead)
    with pytest.raises(ServingError) as caught:
        RecommenderClient("dead", "recsys", timeout=5, retries=2, channel=channel).recommend(["u"])
    assert caught.value.code == "UNAVAILABLE" and dead.calls == 3

    live = _CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target), live)
    client = RecommenderClient(server.target, "recsys", timeout=30, retries=5, channel=channel)
    with pytest.raises(ServingError) as caught:
        client.recommend([users_of(cosine_run_dir)[0]] * (MAX_BATCH + 1))
    assert caught.value.code == "INVALID_ARGUMENT" and live.calls == 1
    assert "Task size" in str(caught.value)


def test_unimplemented_and_size_cap(server):
    own(server)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "recsys"
    assert rpc_error(server.predict_stub.Classify, request).code() == grpc.StatusCode.UNIMPLEMENTED
    assert http("POST", f"{server.rest}/v1/models/recsys:classify", {"examples": []})[0] == 501
    big = predict_request("recsys", "serving_default", user_id=["x" * 1000] * 2000)  # ~2 MB
    assert rpc_error(server.predict_stub.Predict, big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, answer = http("POST", f"{server.rest}/v1/models/recsys:predict", {"instances": ["x" * 1000] * 2000})
    assert status == 429 and "exceeds the limit" in answer["error"]
    assert http("GET", f"{server.rest}/v1/models/recsys")[0] == 200
    # the --verbose request log has one line per request
    assert "grpc Classify model=recsys signature=- -> UNIMPLEMENTED" in server.log()


def test_query_cli_prints_the_table_and_faithfulness(server, cosine_run_dir, dot_run_dir, capsys):
    own(server)
    import argparse

    from serving.cli import FAITHFULNESS_WARNING, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    user = users_of(cosine_run_dir)[0]
    args = parser.parse_args(
        ["query", "--target", server.target, "--model", "recsys", "recommend", user, "--explain"]
    )
    assert args.func(args) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("rank"))
    for column in ("item", "score", "cosine", "dot", "item norm", "top dimensions"):
        assert column in header
    assert "cosine_is_training_objective = true" in table and FAITHFULNESS_WARNING not in table
    assert sum(1 for line in table.splitlines() if line[:1].isdigit()) == K

    args = parser.parse_args(
        ["query", "--target", server.target, "--model", "dotmodel", "recommend",
         users_of(dot_run_dir)[0], "--explain"]
    )
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "cosine_is_training_objective = false" in table and FAITHFULNESS_WARNING in table

    args = parser.parse_args(
        ["query", "--target", server.rest.removeprefix("http://"), "--rest", "--model", "recsys",
         "similar", items_of(cosine_run_dir)[0], "--top", "3"]
    )
    assert args.func(args) == 0
    assert sum(1 for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()) == 3

    args = parser.parse_args(["query", "--target", server.target, "--model", "nope", "status"])
    with pytest.raises(ServingError, match="NOT_FOUND: Could not find any versions of model nope"):
        args.func(args)


def test_serving_config_for_the_real_server(exports, tmp_path, capsys):
    import argparse

    from serving.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for name, scann in (("dot", False), ("cosine", True)):
        out = tmp_path / name
        args = parser.parse_args(
            ["serving-config", "--model_base_path", str(exports[name]), "--output_dir", str(out),
             "--container_base_path", f"/models/{name}", "--max_batch_size", "32"]
        )
        assert args.func(args) == 0
        config = text_format.Parse(
            (out / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
        )
        (entry,) = config.model_config_list.config
        assert (entry.name, entry.base_path, entry.model_platform) == (name, f"/models/{name}", "tensorflow")
        assert entry.model_version_policy.latest.num_versions == 1
        batching = (out / "batching.config").read_text()
        assert "max_batch_size { value: 32 }" in batching
        assert ("ScaNN ops" in capsys.readouterr().out) is scann
    args = parser.parse_args(["serving-config", "--model_base_path", str(tmp_path / "missing")])
    with pytest.raises(ServingError, match="is not a directory"):
        args.func(args)


# ------------------------------------------------------------------------------ versions


@pytest.fixture(scope="module")
def reload_server(exports, tmp_path_factory):
    """A server polling every 0.5 s over a base path that starts with version 1 only."""
    base = tmp_path_factory.mktemp("reload") / "recsys"
    shutil.copytree(exports["cosine"], base)
    srv = start_own_server(
        ["--model_name", "recsys", "--model_base_path", str(base),
         "--file_system_poll_wait_seconds", "0.5", "--rest_api_port", "0"],
        base.parent / "server.log",
    )
    srv.base = base
    try:
        srv.wait_available("recsys")
        yield srv
    finally:
        srv.stop()


def _status(srv) -> dict[int, tuple[int, int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "recsys"
    return {
        s.version: (s.state, s.status.error_code, s.status.error_message)
        for s in srv.model_stub.GetModelStatus(request, 30).model_version_status
    }


def test_hot_reload_and_broken_version(reload_server, cosine_run_dir):
    srv = reload_server
    user = users_of(cosine_run_dir)[0]
    results: list[tuple[int | None, str | None]] = []
    stop = threading.Event()

    def client_loop():
        with RecommenderClient(srv.target, "recsys", timeout=30, retries=0) as client:
            while not stop.is_set():
                try:
                    results.append((client.recommend([user]).model_version, None))
                except ServingError as error:
                    results.append((None, str(error)))

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        export([(cosine_run_dir, srv.base, 2, "scann")])  # atomic: temp folder, then rename
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(v == 2 for v, _ in results[-5:]):
            time.sleep(0.2)
        assert any(v == 2 for v, _ in results), f"never switched to version 2:\n{srv.log()}"

        # A corrupt version 3 (published atomically, as an exporter would) fails to load.
        staging = srv.base / ".tmp-3"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        staging.rename(srv.base / "3")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 3 not in _status(srv):
            time.sleep(0.2)
        while time.monotonic() < deadline and _status(srv)[3][0] == get_model_status_pb2.ModelVersionStatus.LOADING:
            time.sleep(0.2)
        time.sleep(1.5)  # a few more polls: v3 must not be retried, v2 must keep serving
        count = len(results)
        time.sleep(0.5)
        assert len(results) > count, "the client loop stalled"
    finally:
        stop.set()
        thread.join()

    failures = [error for _, error in results if error]
    assert not failures, failures[:3]
    versions = [v for v, _ in results]
    first_v2 = versions.index(2)
    assert set(versions[:first_v2]) == {1} and set(versions[first_v2:]) == {2}

    status = _status(srv)
    assert status[1][0] == get_model_status_pb2.ModelVersionStatus.END and status[1][1] == 0
    assert status[2][0] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status[3][0] == get_model_status_pb2.ModelVersionStatus.END
    assert status[3][1] != 0 and status[3][2], "the failed version's error is reported"
    log = srv.log()
    assert "swapped recsys: serving version 2 (was 1)" in log
    assert log.count("failed to load recsys version 3") == 1
    assert "still serving version 2" in log


def test_sigterm_shuts_down_cleanly(reload_server):
    srv = reload_server
    assert srv.process.poll() is None
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=60) == 0
    log = srv.log()
    assert "received SIGTERM" in log and "server stopped" in log
    with pytest.raises(ServingError) as caught:
        RecommenderClient(srv.target, "recsys", timeout=5, retries=0).status()
    assert caught.value.code == "UNAVAILABLE"


def test_serve_rejects_bad_flags(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "serve", "--model_base_path", str(tmp_path / "none")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("tfrs-cosine: error: --model_base_path")


def test_serving_loads_exports_without_tfrs_or_legacy_keras(exports):
    """serving.* loads a ScaNN export with neither TFRS, training, tfrs_cosine nor Keras 2."""
    code = f"""
import os, sys
os.environ.pop("TF_USE_LEGACY_KERAS", None)
import serving.cli, serving.client, serving.config
from serving.server import Model, ModelConfig
from pathlib import Path
model = Model(ModelConfig("m", Path({str(exports["cosine"])!r})))
model.poll(initial=True)
assert model.servable().version == 1, model.states()
from export.verify import training_stack_modules
bad = training_stack_modules()
assert not bad, bad
assert "TF_USE_LEGACY_KERAS" not in os.environ
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
