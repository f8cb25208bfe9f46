"""Feature models end to end: train and export through the CLI, load the export in a fresh
process, serve it (gRPC with the official stubs, REST row and columnar, dynamic batching
with different history lengths), query it. The bad feature inputs of ``train`` are in
the corpus, ``tests/e2e/test_bad_input.py``.

Data: ``tests/feature_tables.py`` (60 users, 45 items, user and item tables). The export
adds a new item from ``--items`` that no training row has seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli
from feature_tables import write_config, write_feature_data
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from export import contract
from serving.client import RecommenderClient, RestRecommenderClient
from serving.errors import ServingError
from serving.process import ServerProcess

K = 8
NEW_ITEM = ("fresh1", "a|all", "film a fresh")
RECOMMEND = contract.RECOMMEND_NAME


@pytest.fixture(scope="module")
def feature_export(tmp_path_factory):
    """A feature run trained by the CLI and exported (brute force) with one new item."""
    folder = tmp_path_factory.mktemp("features")
    paths = write_feature_data(folder / "data")
    config = write_config(folder / "features.toml", paths)
    run_cli("train", "--config", str(config), "--run-dir", str(folder / "run"), check=True)
    items = folder / "items_plus.csv"
    items.write_text(paths["items"].read_text() + ",".join(NEW_ITEM) + "\n")
    done = run_cli("export", str(folder / "run"), "--model-base-path", str(folder / "models"),
                   "--index", "brute-force", "--k", str(K), "--items", str(items), check=True)
    assert "checks passed" in done.stdout
    return {"run": folder / "run", "export": folder / "models" / "1", "base": folder / "models",
            "items": items, "paths": paths, "folder": folder}


def test_the_run_directory_holds_what_export_and_evaluation_need(feature_export):
    run = feature_export["run"]
    assert sorted(p.name for p in (run / "features").iterdir()) == [
        "features.json", "items.npz", "statistics.json", "users.npz"]
    stored = json.loads((run / "metrics.json").read_text())["test"]
    done = run_cli("evaluate", str(run), check=True)
    assert f"{stored['recall@10']:9.4f}" in done.stdout  # load_run rebuilds the same model


FRESH = """
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
request = json.loads(sys.argv[2])
out = {}
for name, inputs in request.items():
    function = model.signatures[name.split("#")[0]]
    _, specs = function.structured_input_signature
    tensors = {k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()}
    out[name] = {k: v.numpy().tolist() for k, v in function(**tensors).items()}
stack = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_keras", "tensorflow_recommenders", "training", "tfrs_cosine"))
print(json.dumps({"outputs": out, "stack": stack}, default=lambda b: b.decode()))
"""


def test_a_fresh_process_serves_a_known_user_a_new_user_and_a_new_item(feature_export):
    from export import ExportOptions
    from export.feature_model import FeatureExport, run_tower
    from training.modeling import load_run

    run = load_run(feature_export["run"])
    export = FeatureExport.from_run(run, ExportOptions(items=str(feature_export["items"])))
    tables = export.tables()
    known = export.users[3]
    history = [export.items[0], export.items[5]]
    fresh = export.items.index(NEW_ITEM[0])
    item_inputs = export.item_inputs(np.array([fresh]))
    request = {
        "serving_default": {"user_id": [known]},
        f"{RECOMMEND}#new": {"user_id": [""], "age": [33.0], "gender": ["F"],
                             "history": [["", *history]], "timestamp": [0],
                             "exclude_item_ids": [[""]]},
        "embed_items": {k: v.tolist() for k, v in item_inputs.items()},
        "similar_items": {"item_id": [NEW_ITEM[0]]},
    }
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", FRESH, str(feature_export["export"]),
                           json.dumps(request)], capture_output=True, text=True, cwd=ROOT,
                          env=env | {"TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["stack"] == []  # loaded with TensorFlow alone
    out = answer["outputs"]
    unit_items = tables.compared(tables.item_vectors[1:])

    def expected_top(query: np.ndarray, excluded: set[int]) -> list[str]:
        scores = unit_items @ query
        scores[list(excluded)] = -np.inf
        return [export.items[i] for i in np.argsort(-scores, kind="stable")[:K]]

    # A known user: stored features and history, training items left out.
    row = export.users.index(known)
    query = tables.compared(tables.user_vectors[row + 1])
    assert out["serving_default"]["item_ids"][0] == expected_top(query, set(export.seen_of(row)))
    assert out["serving_default"]["known_user"] == [True]
    # A new user with a history: the user tower on raw features; its history not returned.
    raw = export.user_inputs(np.array([-1]))
    raw.update(age=np.array([33.0], np.float32), gender=np.array(["F"]),
               history=np.array([history + [""] * (export.inputs.history_length - 2)]))
    query = tables.compared(run_tower(run.model.user_tower, raw))[0]
    new = out[f"{RECOMMEND}#new"]
    assert new["item_ids"][0] == expected_top(query, {export.items.index(h) for h in history})
    assert new["known_user"] == [False]
    # The new item: embedded by the item tower from its features, and in the catalog.
    np.testing.assert_allclose(out["embed_items"]["embeddings"][0],
                               tables.compared(tables.item_vectors[fresh + 1]), atol=1e-5)
    assert out["similar_items"]["known_item"] == [True]
    assert json.loads((feature_export["export"] / contract.MODEL_CARD).read_text())[
        "features"]["new_items"] == 1


# ----------------------------------------------------------------------------------------
# serving


@pytest.fixture(scope="module")
def server(feature_export):
    srv = ServerProcess(["--model_name", "feat", "--model_base_path",
                         str(feature_export["base"])], feature_export["folder"] / "server.log")
    try:
        srv.wait_available("feat")
        yield srv
    finally:
        srv.stop()


ROWS = [
    {"user_id": "u1", "age": 20.0, "gender": "M", "history": ["", "i3", "i4", "i9"],
     "timestamp": 0, "exclude_item_ids": ["", "i1"]},
    {"user_id": "", "age": 61.0, "gender": "F", "history": ["", "", "", "i2"],
     "timestamp": 1050, "exclude_item_ids": ["", ""]},
    {"user_id": "stranger", "age": 35.5, "gender": "", "history": ["", "", "", ""],
     "timestamp": 0, "exclude_item_ids": ["", "i7"]},
]


def _grpc_predict(srv, inputs: dict) -> dict:
    channel = grpc.insecure_channel(srv.target)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "feat"
        request.model_spec.signature_name = RECOMMEND
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, 30)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    finally:
        channel.close()


def _columns() -> dict:
    return {
        "user_id": np.array([r["user_id"] for r in ROWS]),
        "age": np.array([r["age"] for r in ROWS], np.float32),
        "gender": np.array([r["gender"] for r in ROWS]),
        "history": np.array([r["history"] for r in ROWS]),
        "timestamp": np.array([r["timestamp"] for r in ROWS], np.int64),
        "exclude_item_ids": np.array([r["exclude_item_ids"] for r in ROWS]),
    }


def _rest(srv, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{srv.rest}/v1/models/feat:predict",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_multi_input_requests_agree_over_grpc_rest_rows_and_columns(server):
    got = _grpc_predict(server, _columns())
    ids = got["item_ids"].astype(str)
    for row, request in enumerate(ROWS):
        assert not set(ids[row]) & set(request["exclude_item_ids"] + request["history"])
    status, rows = _rest(server, {"signature_name": RECOMMEND, "instances": ROWS})
    assert status == 200, rows
    status, columns = _rest(server, {"signature_name": RECOMMEND, "inputs": {
        k: v.tolist() for k, v in _columns().items()}})
    assert status == 200, columns
    for name in ("item_ids", "scores", "known_user"):
        expected = got[name].astype(str) if name == "item_ids" else got[name]
        from_rows = np.array([p[name] for p in rows["predictions"]]).astype(expected.dtype)
        from_columns = np.array(columns["outputs"][name]).astype(expected.dtype)
        np.testing.assert_array_equal(from_rows, expected)  # float32 JSON text round-trips
        np.testing.assert_array_equal(from_columns, expected)
    # The clients build the same request from features by name.
    for client in (RecommenderClient(server.target, "feat"),
                   RestRecommenderClient(server.rest, "feat")):
        answer = client.recommend_for("u1", features={"age": 20, "gender": "M"},
                                      history=["i3", "i4", "i9"], exclude=["i1"])
        assert answer["item_ids"][0].tolist() == ids[0].tolist()


@pytest.mark.parametrize(
    ("change", "grpc_text", "rest_text"),
    [
        ("missing", "Missing but required: {age}", "Missing named input: age"),
        ("dtype", "Expects arg[0] to be float but string is provided",
         "is not of expected type: float"),
    ],
)
def test_a_missing_feature_or_a_wrong_dtype_is_invalid_argument(server, change, grpc_text,
                                                                 rest_text):
    inputs = _columns()
    if change == "missing":
        del inputs["age"]
    else:
        inputs["age"] = np.array(["old", "young", "?"])
    with pytest.raises(grpc.RpcError) as error:
        _grpc_predict(server, inputs)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_text in error.value.details()
    status, answer = _rest(server, {"signature_name": RECOMMEND,
                                    "inputs": {k: v.tolist() for k, v in inputs.items()}})
    assert status == 400 and rest_text in answer["error"]
    with pytest.raises(ServingError, match="feature age is float32"):
        RecommenderClient(server.target, "feat").recommend_for(features={"age": "x", "gender": "F"})


def test_batched_requests_with_different_history_lengths_answer_as_alone(feature_export, server):
    folder = feature_export["folder"]
    (folder / "batching.config").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n"
        "num_batch_threads { value: 1 }\npad_variable_length_inputs: true\n")
    (folder / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    histories = [["i3"], ["i4", "i9", "i12"], [], ["i2", "i5"], ["i1", "i8", "i20", "i21", "i30"]]
    alone = [RecommenderClient(server.target, "feat").recommend_for(
        "u2", features={"age": 40, "gender": "F"}, history=h)["item_ids"][0].tolist()
        for h in histories]
    batched = ServerProcess(
        ["--model_name", "feat", "--model_base_path", str(feature_export["base"]),
         "--enable_batching", "--batching_parameters_file", str(folder / "batching.config"),
         "--monitoring_config_file", str(folder / "monitoring.config")],
        folder / "batched.log")
    try:
        batched.wait_available("feat")
        answers: dict[int, list[str]] = {}
        start = threading.Barrier(len(histories))

        def ask(index: int) -> None:
            client = RecommenderClient(batched.target, "feat", timeout=30)
            start.wait()
            answers[index] = client.recommend_for(
                "u2", features={"age": 40, "gender": "F"}, history=histories[index]
            )["item_ids"][0].tolist()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(histories))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [answers[i] for i in range(len(histories))] == alone
        with urllib.request.urlopen(f"{batched.rest}/monitoring/prometheus/metrics",
                                    timeout=30) as response:
            metrics = response.read().decode()
        processed = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                     if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_")}
        count = processed[":tensorflow:serving:batching_session:processed_batch_size_count"]
        total = processed[":tensorflow:serving:batching_session:processed_batch_size_sum"]
        assert total > count  # at least one batch merged requests of different widths
    finally:
        batched.stop()


def test_query_recommend_with_raw_features(server):
    done = run_cli("query", "--target", server.target, "--model", "feat", "recommend",
                   "--history", "i3,i4", "--feature", "age=30", "--feature", "gender=F",
                   "--exclude", "i5", "--top", "3", check=True)
    assert "a new user: top 3 items" in done.stdout and "i5 " not in done.stdout
    done = run_cli("query", "--target", server.target, "--model", "feat", "recommend",
                   "--feature", "age=thirty", "--feature", "gender=F")
    assert done.returncode == 2
    assert done.stderr.strip() == ("tfrs-cosine: error: feature age is float32: could not "
                                   "convert string to float: 'thirty'")
