"""Serving end to end: real exports, a real server subprocess, the official stubs and HTTP.

The exports are made by the real exporter (``export.export_savedmodel``) from tiny
trained runs (conftest's ``cosine_run_dir`` and ``dot_run_dir``). The server runs as
``python -m training.cli serve`` on free loopback ports (``serving.process``, the harness
the benchmark uses too) and is driven through the official ``tensorflow_serving.apis``
stubs and plain HTTP (urllib), as any client of the real binary would. Signature, input
and output names come from ``export.contract``.

When ``tensorflow_model_server`` is on PATH (or ``TF_SERVING_BIN`` names it), the client
tests in ``TestClientProtocol`` also run against it with the portable (brute-force)
export; otherwise that half is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from export import contract
from serving.client import RecommenderClient, RestRecommenderClient
from serving.errors import ServingError
from serving.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
K = 10
MAX_BATCH = 64
TF_SERVING_BIN = os.environ.get("TF_SERVING_BIN") or shutil.which("tensorflow_model_server")

# Every name below is the contract's (a renamed signature or tensor fails here first).
SIGNATURES = set(contract.SIGNATURE_NAMES)
RECOMMEND, EXPLAIN, SIMILAR, EMBED_USERS, EMBED_ITEMS = (
    contract.SERVING_DEFAULT.name, contract.EXPLAIN.name, contract.SIMILAR_ITEMS.name,
    contract.EMBED_USERS.name, contract.EMBED_ITEMS.name,
)
(USER_ID,) = contract.SERVING_DEFAULT.input_names
ITEM_IDS_IN = contract.EXPLAIN.input("item_ids").name
ITEM_IDS = contract.SERVING_DEFAULT.output("item_ids").name
SCORES = contract.SERVING_DEFAULT.output("scores").name
KNOWN_USER = contract.SERVING_DEFAULT.output("known_user").name
COSINE = contract.EXPLAIN.output("cosine").name
DOT = contract.EXPLAIN.output("dot").name
TOP_DIMENSIONS = contract.EXPLAIN.output("top_dimensions").name
CONTRIBUTIONS = contract.EXPLAIN.output("contributions").name
ITEM_NORMS = contract.EXPLAIN.output("item_norms").name
KNOWN_ITEMS = contract.EXPLAIN.output("known_items").name
FAITHFUL = contract.EXPLAIN.output("cosine_is_training_objective").name
KNOWN_ITEM = contract.SIMILAR_ITEMS.output("known_item").name
(EMBEDDINGS,) = contract.EMBED_USERS.output_names


# ------------------------------------------------------------------------------ helpers


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


class Server(ServerProcess):
    """The harness with the official stubs on a channel to it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel = grpc.insecure_channel(self.target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def stop(self, timeout: float = 60) -> int:
        self.channel.close()
        return super().stop(timeout)


def predict_request(model: str, signature: str, *values, inputs=None) -> predict_pb2.PredictRequest:
    """A PredictRequest; positional ``values`` are the signature's inputs in contract order."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if inputs is None:
        names = contract.SIGNATURES[signature].input_names
        assert len(values) == len(names), f"{signature} takes {names}"
        inputs = dict(zip(names, values, strict=True))
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


def model_config_file(path: Path, models: dict[str, Path]) -> Path:
    config = model_server_config_pb2.ModelServerConfig()
    for name, base in models.items():
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base), "tensorflow"
    path.write_text(text_format.MessageToString(config))
    return path


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
        config_file = model_config_file(
            logs / "models.config", {"recsys": exports["cosine"], "dotmodel": exports["dot"]}
        )
        srv = Server(
            ["--model_config_file", str(config_file), "--max_batch_size", str(MAX_BATCH),
             "--max_request_bytes", str(1 << 20), "--access_log"],
            logs / "own.log",
        )
    else:
        if not TF_SERVING_BIN:
            pytest.skip("tensorflow_model_server is not on PATH and TF_SERVING_BIN is not set")
        portable = tmp_path_factory.mktemp("portable") / "recsys"
        export([(cosine_run_dir, portable, 1, "brute-force")])
        from serving.batching import BatchingParameters
        from serving.config import write_serving_configs

        written = write_serving_configs(
            portable, logs, "recsys", batching=BatchingParameters(max_batch_size=MAX_BATCH)
        )
        grpc_port, rest_port = free_port(), free_port()
        srv = Server(
            [], logs / "tf_serving.log", grpc_port=grpc_port, rest_port=rest_port,
            command=[TF_SERVING_BIN, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                     f"--model_config_file={written['models.config']}", "--enable_batching",
                     f"--batching_parameters_file={written['batching.config']}"],
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

        response = stub.Predict(predict_request("recsys", RECOMMEND, users), 30)
        assert response.model_spec.version.value == 1
        out = outputs_of(response)
        assert out[ITEM_IDS].shape == (3, K) and out[SCORES].shape == (3, K)
        assert out[KNOWN_USER].tolist() == [True, True, False]
        assert np.all(np.diff(out[SCORES], axis=1) <= 1e-6), "scores are not ordered"
        assert all(len(set(row)) == K for row in out[ITEM_IDS].tolist())

        top = out[ITEM_IDS][:1]
        why = outputs_of(
            stub.Predict(predict_request("recsys", EXPLAIN, users[:1], top), 30)
        )
        assert why[COSINE].shape == (1, K) and why[TOP_DIMENSIONS].dtype == np.int32
        assert why[KNOWN_ITEMS].all() and why[KNOWN_USER].tolist() == [True]
        assert why[FAITHFUL].tolist() == [True]
        # The cosine head ranks by cosine: explain's cosine is the recommendation score.
        np.testing.assert_allclose(why[COSINE][0], out[SCORES][0], atol=1e-4)

        embeddings = {}
        for signature, ids in ((EMBED_USERS, users[:1]), (EMBED_ITEMS, top[0])):
            emb = outputs_of(stub.Predict(predict_request("recsys", signature, ids), 30))
            embeddings[signature] = emb[EMBEDDINGS]
        u, v = embeddings[EMBED_USERS], embeddings[EMBED_ITEMS]
        cosine = (v @ u[0]) / (np.linalg.norm(v, axis=1) * np.linalg.norm(u[0]))
        np.testing.assert_allclose(cosine, why[COSINE][0], atol=1e-4)

        similar = outputs_of(
            stub.Predict(predict_request("recsys", SIMILAR, items[:2]), 30)
        )
        assert similar[ITEM_IDS].shape == (2, K) and similar[KNOWN_ITEM].all()
        for item, row in zip(items[:2], similar[ITEM_IDS].tolist(), strict=True):
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

        assert dtype(RECOMMEND, "inputs", USER_ID) == "string"
        assert shape(RECOMMEND, "inputs", USER_ID) == [-1]
        assert dtype(RECOMMEND, "outputs", ITEM_IDS) == "string"
        assert shape(RECOMMEND, "outputs", SCORES) == [-1, K]
        assert dtype(RECOMMEND, "outputs", KNOWN_USER) == "bool"
        assert dtype(EXPLAIN, "outputs", TOP_DIMENSIONS) == "int32"
        assert len(shape(EXPLAIN, "outputs", CONTRIBUTIONS)) == 3
        assert dtype(EXPLAIN, "outputs", FAITHFUL) == "bool"
        assert dtype(SIMILAR, "outputs", COSINE) == "float32"

        status, body = http("GET", f"{server.rest}/v1/models/recsys/metadata")
        assert status == 200
        rest_defs = body["metadata"]["signature_def"]["signature_def"]
        assert set(rest_defs) == set(defs)
        assert rest_defs[RECOMMEND]["inputs"][USER_ID]["dtype"] == "DT_STRING"

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
            server.predict_stub.Predict(predict_request("recsys", RECOMMEND, users), 30)
        )
        status, row = http("POST", url, {"instances": users})
        assert status == 200, row
        status, col = http("POST", url, {"signature_name": RECOMMEND, "inputs": {USER_ID: users}})
        assert status == 200, col
        assert [r[ITEM_IDS] for r in row["predictions"]] == grpc_out[ITEM_IDS].astype(str).tolist()
        assert col["outputs"][ITEM_IDS] == grpc_out[ITEM_IDS].astype(str).tolist()
        np.testing.assert_array_equal(
            np.array([r[SCORES] for r in row["predictions"]], np.float32), grpc_out[SCORES]
        )
        np.testing.assert_array_equal(np.array(col["outputs"][SCORES], np.float32), grpc_out[SCORES])
        assert col["outputs"][KNOWN_USER] == grpc_out[KNOWN_USER].tolist()

        items = grpc_out[ITEM_IDS][:, :4].astype(str).tolist()
        explain = outputs_of(
            server.predict_stub.Predict(
                predict_request("recsys", EXPLAIN, users, items), 30
            )
        )
        status, row = http(
            "POST", url,
            {"signature_name": EXPLAIN,
             "instances": [{USER_ID: u, ITEM_IDS_IN: i} for u, i in zip(users, items, strict=True)]},
        )
        assert status == 200, row
        for key in (COSINE, DOT, CONTRIBUTIONS, ITEM_NORMS):
            np.testing.assert_array_equal(
                np.array([r[key] for r in row["predictions"]], np.float32), explain[key]
            )
        assert [r[TOP_DIMENSIONS] for r in row["predictions"]] == explain[TOP_DIMENSIONS].tolist()

    def test_bad_requests_get_the_right_codes(self, server, cosine_run_dir):
        user = users_of(cosine_run_dir)[0]
        stub = server.predict_stub
        cases = {
            "unknown model": (predict_request("nope", RECOMMEND, [user]),
                              grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
            "unknown signature": (predict_request("recsys", "nope", inputs={USER_ID: [user]}),
                                  grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
            "missing input": (predict_request("recsys", EXPLAIN, inputs={USER_ID: [user]}),
                              grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {" + ITEM_IDS_IN + "}"),
            "wrong dtype": (predict_request("recsys", RECOMMEND, np.array([1], np.int64)),
                            grpc.StatusCode.INVALID_ARGUMENT, ""),
            "wrong rank": (predict_request("recsys", RECOMMEND, [[user]]),
                           grpc.StatusCode.INVALID_ARGUMENT, ""),
            "oversized batch": (predict_request("recsys", RECOMMEND, [user] * (MAX_BATCH + 1)),
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"),
        }
        unknown_version = predict_request("recsys", RECOMMEND, [user])
        unknown_version.model_spec.version.value = 99
        cases["unknown version"] = (unknown_version, grpc.StatusCode.NOT_FOUND, "Specific(recsys, 99)")
        good = predict_request("recsys", RECOMMEND, [user])
        for what, (request, code, message) in cases.items():
            error = rpc_error(stub.Predict, request)
            assert error.code() == code, f"{what}: {error.code()} {error.details()}"
            assert message in error.details(), f"{what}: {error.details()}"
            assert stub.Predict(good, 30).outputs[ITEM_IDS].tensor_shape.dim[1].size == K

        url = f"{server.rest}/v1/models"
        rest_cases = {
            "unknown model": ("/nope:predict", {"instances": [user]}, 404),
            "unknown version": ("/recsys/versions/99:predict", {"instances": [user]}, 404),
            "unknown signature": (":predict", {"signature_name": "nope", "instances": [user]}, 400),
            "missing input": (":predict", {"signature_name": EXPLAIN, "inputs": {USER_ID: [user]}}, 400),
            "wrong dtype": (":predict", {"instances": [1]}, 400),
            "oversized batch": (":predict", {"instances": [user] * (MAX_BATCH + 1)}, 400),
            "malformed JSON": (":predict", '{"instances": [', 400),
            "no instances": (":predict", {"signature_name": RECOMMEND}, 400),
            "both formats": (":predict", {"instances": [user], "inputs": [user]}, 400),
            "ragged": (":predict", {"signature_name": EXPLAIN,
                                    "inputs": {USER_ID: [user], ITEM_IDS_IN: [["a", "b"], ["c"]]}}, 400),
        }
        for what, (path, body, expected) in rest_cases.items():
            status, answer = http("POST", url + path, body)
            assert status == expected, f"{what}: {status} {answer}"
            assert isinstance(answer.get("error"), str) and answer["error"], what
            status, _ = http("POST", url + "/recsys:predict", {"instances": [user]})
            assert status == 200
        assert http("GET", url + "/nope")[0] == 404

    def test_output_filter_and_version(self, server, cosine_run_dir):
        request = predict_request("recsys", RECOMMEND, users_of(cosine_run_dir)[:1])
        request.output_filter.append(SCORES)
        request.model_spec.version.value = 1
        response = server.predict_stub.Predict(request, 30)
        assert set(response.outputs) == {SCORES} and response.model_spec.version.value == 1
        request.output_filter.append("nope")
        assert rpc_error(server.predict_stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_clients(self, server, cosine_run_dir):
        users = users_of(cosine_run_dir)[:2]
        with RecommenderClient(server.target, "recsys", timeout=30) as client:
            grpc_result = client.recommend(users)
            assert grpc_result.model_version == 1
            assert grpc_result[ITEM_IDS].shape == (2, K)
            assert isinstance(grpc_result[ITEM_IDS][0, 0], str)
            why = client.explain(users[0], list(grpc_result[ITEM_IDS][0, :3]))
            assert why[COSINE].shape == (3,) and bool(why[FAITHFUL])
            assert client.similar_items(items_of(cosine_run_dir)[0])[COSINE].shape == (1, K)
            assert client.embed_users(users).shape[0] == 2
            assert SIGNATURES <= set(client.metadata())
            assert [(s.version, s.state) for s in client.status()] == [(1, "AVAILABLE")]
        rest = RestRecommenderClient(server.rest, "recsys", timeout=30)
        rest_result = rest.recommend(users)
        assert rest_result[ITEM_IDS].tolist() == grpc_result[ITEM_IDS].tolist()
        np.testing.assert_array_equal(rest_result[SCORES], grpc_result[SCORES])
        assert [(s.version, s.state) for s in rest.status()] == [(1, "AVAILABLE")]
        assert rest.metadata()[RECOMMEND].outputs[SCORES].dtype == "float32"
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


def test_classify_regress_and_size_caps(server):
    own(server)
    for call, request_type, message in (
        (server.predict_stub.Classify, classification_pb2.ClassificationRequest,
         "Expected one or two output Tensors, found 3"),
        (server.predict_stub.Regress, regression_pb2.RegressionRequest, "Expected one output Tensor."),
    ):
        request = request_type()
        request.model_spec.name = "recsys"
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message
    status, answer = http("POST", f"{server.rest}/v1/models/recsys:classify", {"examples": []})
    assert status == 400 and answer["error"] == "Expected one or two output Tensors, found 3"
    big = predict_request("recsys", RECOMMEND, ["x" * 1000] * 2000)  # ~2 MB
    assert rpc_error(server.predict_stub.Predict, big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, answer = http("POST", f"{server.rest}/v1/models/recsys:predict", {"instances": ["x" * 1000] * 2000})
    assert status == 413 and "Request Entity Too Large" in answer["error"]
    assert http("GET", f"{server.rest}/v1/models/recsys")[0] == 200
    # the access log has one line per request: model, signature, version, status, ms
    log = server.log()
    assert "gRPC Classify model=recsys signature=serving_default version=- -> INVALID_ARGUMENT" in log
    assert "POST /v1/models/recsys:classify model=recsys signature=serving_default version=- -> 400" in log


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
    """A server polling every 0.2 s over a base path that starts with version 1 only."""
    base = tmp_path_factory.mktemp("reload") / "recsys"
    shutil.copytree(exports["cosine"], base)
    monitoring = base.parent / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    srv = Server(
        ["--model_name", "recsys", "--model_base_path", str(base),
         "--file_system_poll_wait_seconds", "0.2", "--monitoring_config_file", str(monitoring)],
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


def _polls(srv) -> int:
    """The server's completed polls (its metrics endpoint)."""
    with urllib.request.urlopen(f"{srv.rest}/monitoring/prometheus/metrics", timeout=30) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(":tfrs_cosine:serving:file_system_poll_count "):
                return int(float(line.split()[1]))
    raise AssertionError("no poll count in the metrics")


def _wait_for(condition, what: str, srv, timeout: float = 120) -> None:
    """Waits for a condition the server reaches on its own (bounded, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f} s:\n{srv.log()}")
        time.sleep(0.05)


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
        _wait_for(lambda: any(v == 2 for v, _ in results[-5:]), "the switch to version 2", srv)

        # A corrupt version 3 (published atomically, as an exporter would) fails to load.
        staging = srv.base / ".tmp-3"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        staging.rename(srv.base / "3")
        _wait_for(lambda: _status(srv).get(3, (0,))[0] == get_model_status_pb2.ModelVersionStatus.END,
                  "version 3's failure", srv)
        # Three more polls with version 3 unchanged on disk: it must not be retried, and
        # version 2 keeps answering meanwhile.
        polls, answered = _polls(srv), len(results)
        _wait_for(lambda: _polls(srv) >= polls + 3, "three more polls", srv)
        _wait_for(lambda: len(results) > answered, "an answer after those polls", srv)
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


def test_batching_gives_every_caller_its_own_answer(exports, cosine_run_dir, tmp_path):
    """Concurrent callers of random batch sizes through --enable_batching get exactly the
    answers the same server gives without batching."""
    from serving.batching import BatchingParameters
    from serving.config import write_serving_configs

    written = write_serving_configs(
        exports["cosine"], tmp_path, "recsys",
        batching=BatchingParameters(max_batch_size=32, batch_timeout_micros=3000, num_batch_threads=2),
    )
    users = (cosine_run_dir / "vocab" / "users.txt").read_text().split()
    rng = np.random.default_rng(3)
    batches = [[users[i] for i in rng.integers(0, len(users), rng.integers(1, 9))] for _ in range(64)]
    answers = {}
    for batching in (False, True):
        flags = ["--enable_batching", "--batching_parameters_file", str(written["batching.config"])]
        srv = Server(
            ["--model_name", "recsys", "--model_base_path", str(exports["cosine"]),
             *(flags if batching else [])],
            tmp_path / f"batching-{batching}.log", rest_port=0,
        )
        try:
            srv.wait_available("recsys")
            got: list = [None] * len(batches)
            start = threading.Barrier(16)

            def worker(offset, client, got=got, start=start):
                start.wait()
                for index in range(offset, len(batches), 16):
                    got[index] = client.recommend(batches[index])

            clients = [RecommenderClient(srv.target, "recsys", timeout=60) for _ in range(16)]
            threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            answers[batching] = got
        finally:
            srv.stop()
    for batch, alone, merged in zip(batches, answers[False], answers[True], strict=True):
        assert merged[ITEM_IDS].shape == (len(batch), K)
        assert merged[KNOWN_USER].tolist() == alone[KNOWN_USER].tolist()
        # A batch of another size may round the last bit of a score differently (another
        # matmul kernel); the rows are the caller's own, in the same order up to ties.
        np.testing.assert_allclose(merged[SCORES], alone[SCORES], rtol=0, atol=1e-6)
        for got, want, scores in zip(merged[ITEM_IDS], alone[ITEM_IDS], alone[SCORES], strict=True):
            differ = got != want
            assert sorted(got[differ]) == sorted(want[differ])
            assert np.ptp(scores[differ]) <= 1e-6 if differ.any() else True, "only ties may swap"


BAD_FILES = {
    "binary": b"\x00\x01\x02model_config_list {}",
    "not UTF-8": b"model_config_list { config { name: \"caf\xe9\" } }",
    "not a text proto": b"this is not a ModelServerConfig",
}


@pytest.mark.parametrize("flag", ["--model_config_file", "--batching_parameters_file",
                                  "--monitoring_config_file"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_serve_refuses_bad_config_files_in_one_line(flag, kind, exports, tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_bytes(BAD_FILES[kind])
    args = ["serve", flag, str(bad)]
    if flag != "--model_config_file":
        args += ["--model_base_path", str(exports["cosine"])]
    if flag == "--batching_parameters_file":
        args.append("--enable_batching")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfrs-cosine: error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and str(bad) in lines[0]
    assert time.monotonic() - started < 30, "refused before any model was loaded"


def test_serve_rejects_bad_flags(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "serve", "--model_base_path", str(tmp_path / "none")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("tfrs-cosine: error: --model_base_path")


def test_the_client_needs_no_tensorflow(server):
    """Importing and using the clients leaves TensorFlow out of the process."""
    own(server)
    code = f"""
import sys, time
started = time.perf_counter()
from serving.client import RecommenderClient, RestRecommenderClient
imported = time.perf_counter() - started
with RecommenderClient({server.target!r}, "recsys", timeout=30) as client:
    assert client.recommend(["u"])["item_ids"].shape[0] == 1
    assert client.status()[0].state == "AVAILABLE"
    assert "serving_default" in client.metadata()
RestRecommenderClient({server.rest!r}, "recsys", timeout=30).recommend(["u"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras"))
assert not heavy, heavy[:5]
print(f"ok {{imported:.2f}}")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_serving_loads_exports_without_tfrs_or_legacy_keras(exports):
    """serving.* loads a ScaNN export with neither TFRS, training, tfrs_cosine nor Keras 2."""
    code = f"""
import os, sys
os.environ.pop("TF_USE_LEGACY_KERAS", None)
import serving.cli, serving.client, serving.config
from serving.servable import load_servable
from serving.versions import ModelConfig, VersionManager
from pathlib import Path
model = VersionManager(ModelConfig("m", Path({str(exports["cosine"])!r})), load_servable)
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
