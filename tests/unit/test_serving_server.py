"""The server in process on loopback ports, on a tiny real SavedModel: health, metrics,
REST limits, Classify/Regress answers and graph errors, through the official stubs."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.core import ServerCore
from serving.errors import ServingError
from serving.grpc_services import Handler, ModelHealth
from serving.json_codec import MAX_JSON_DEPTH
from serving.options import ServerOptions
from serving.rest import RestApp
from serving.server import ModelServer, start_grpc_server
from serving.status import RequestError
from serving.versions import ModelConfig

MAX_BYTES = 64 * 1024


class Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        n = tf.cast(tf.strings.length(user_id), tf.float32)
        return {"scores": tf.stack([n, 2 * n], axis=1), "known_user": n > 0}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="user_id"),
        tf.TensorSpec([None, None], tf.string, name="item_ids"),
    ])
    def explain(self, user_id, item_ids):
        tf.debugging.assert_equal(
            tf.shape(user_id)[0], tf.shape(item_ids)[0], message="user_id and item_ids batch sizes differ"
        )
        return {"lengths": tf.strings.length(item_ids) + tf.strings.length(user_id)[:, None]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("models") / "tiny"
    module = Tiny()
    tf.saved_model.save(
        module, str(base / "1"), signatures={"serving_default": module.serve, "explain": module.explain}
    )
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    monitoring = tmp_path_factory.mktemp("conf") / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    options = ServerOptions(
        port=free_port(), rest_api_port=free_port(), model_name="tiny",
        model_base_path=str(model_dir), file_system_poll_wait_seconds=0,
        max_request_bytes=MAX_BYTES, monitoring_config_file=str(monitoring),
        enable_batching=True, grpc_max_threads=8, rest_api_num_threads=4,
    )
    srv = ModelServer(options)
    srv.start()
    srv.channel = grpc.insecure_channel(f"127.0.0.1:{options.port}")
    srv.predict = prediction_service_pb2_grpc.PredictionServiceStub(srv.channel)
    srv.rest = options.rest_api_port
    yield srv
    srv.channel.close()
    srv.stop(grace=1)


def predict(srv, signature: str, **inputs) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return srv.predict.Predict(request, timeout=30)


def call_rest(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        conn.close()


def metrics(srv) -> dict[tuple[str, tuple], float]:
    status, _, body = call_rest(srv.rest, "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_health_is_not_serving_until_every_model_is_available(model_dir, tmp_path):
    second = tmp_path / "second"
    core = ServerCore(
        [ModelConfig("tiny", model_dir), ModelConfig("second", second)], poll_seconds=0, warm_up=False
    )
    model_health = ModelHealth(core)
    port = free_port()
    server = start_grpc_server(Handler(core), model_health, f"127.0.0.1:{port}", 2, MAX_BYTES)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(service: str = "") -> int:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

            NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
            assert status() == NOT_SERVING and status("tiny") == NOT_SERVING
            core.models["tiny"].poll(initial=True)
            assert core.models["tiny"].available
            assert status() == NOT_SERVING, "the second model has no version yet"
            shutil.copytree(model_dir / "1", second / "3")
            core.models["second"].poll(initial=True)
            assert status() == SERVING and status("second") == SERVING
            shutil.rmtree(second / "3")  # its only version is removed: unloaded
            core.models["second"].poll()
            assert status() == NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                status("no-such-service")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(0)
        core.stop()


def test_metrics_count_the_requests_sent(server):
    before = metrics(server)

    def delta(after, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for i in range(5):
        predict(server, "serving_default", user_id=[f"u{i}".encode()])
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            predict(server, "serving_default", user_id=np.array([1.0], np.float32))
    for _ in range(3):
        assert call_rest(server.rest, "POST", "/v1/models/tiny:predict", b'{"instances": ["a", "bb"]}')[0] == 200
    assert call_rest(server.rest, "POST", "/v1/models/tiny:predict", b'{"instances": [1]}')[0] == 400
    after = metrics(server)
    count = ":tensorflow:serving:request_count"
    assert delta(after, count, model_name="tiny", status="OK") == 8
    assert delta(after, count, model_name="tiny", status="INVALID_ARGUMENT") == 3
    by_signature = ":tfrs_cosine:serving:request_count"
    assert delta(after, by_signature, model_name="tiny", signature_name="serving_default",
                 API="Predict", entrypoint="GRPC", status="OK") == 5
    assert delta(after, by_signature, model_name="tiny", signature_name="serving_default",
                 API="Predict", entrypoint="REST", status="OK") == 3
    latency = ":tensorflow:serving:request_latency_count"
    assert delta(after, latency, model_name="tiny", API="Predict", entrypoint="GRPC") == 7
    # batching is on: every Predict that reached the model went through a batch
    assert delta(after, ":tensorflow:serving:batching_session:input_batch_size_count") == 8
    assert after[(":tfrs_cosine:serving:model_version_state", (("model_name", "tiny"), ("version", "1")))] == 30
    assert after[(":tfrs_cosine:serving:model_version_transition_count",
                  (("model_name", "tiny"), ("state", "AVAILABLE")))] == 1
    status, content_type, body = call_rest(server.rest, "GET", "/monitoring/prometheus/metrics")
    assert content_type.startswith("text/plain") and b"# TYPE :tensorflow:serving:request_count" in body


def test_graph_errors_keep_their_status(server, model_dir):
    # Batched (the module's server): the scheduler refuses unequal batch sizes itself.
    with pytest.raises(grpc.RpcError) as caught:
        predict(server, "explain", user_id=[b"u1", b"u2"], item_ids=[[b"a", b"b"]])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = predict(server, "explain", user_id=[b"u1"], item_ids=[[b"a", b"bcd"]])
    assert tf.make_ndarray(ok.outputs["lengths"]).tolist() == [[3, 5]]
    # Unbatched: the graph raises InvalidArgumentError -> INVALID_ARGUMENT / HTTP 400.
    core = ServerCore([ModelConfig("tiny", model_dir)], poll_seconds=0, warm_up=False)
    core.load_initial()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "explain"
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto([b"u1", b"u2"]))
    request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto([[b"a"]]))
    with pytest.raises(RequestError, match="user_id and item_ids batch sizes differ") as raised:
        core.predict(request)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    body = json.dumps({"signature_name": "explain", "inputs": {"user_id": ["u1", "u2"], "item_ids": [["a"]]}})
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/models/tiny:predict",
               "wsgi.input": io.BytesIO(body.encode())}
    answer = {}
    data = RestApp(core)(environ, lambda status, headers: answer.update(status=status))
    assert answer["status"] == "400 Bad Request"
    assert "batch sizes differ" in json.loads(b"".join(data))["error"]
    core.stop()


def test_classify_and_regress_answer_as_tf_serving(server):
    cases = [
        (server.predict.Classify, classification_pb2.ClassificationRequest, "", "No classification inputs found in SignatureDef"),
        (server.predict.Regress, regression_pb2.RegressionRequest, "", "Expected one output Tensor."),
        (server.predict.Classify, classification_pb2.ClassificationRequest, "explain", "Expected one input Tensor."),
        (server.predict.Regress, regression_pb2.RegressionRequest, "nope", "No signature was found with the name: nope"),
    ]
    for call, request_type, signature, message in cases:
        request = request_type()
        request.model_spec.name = "tiny"
        request.model_spec.signature_name = signature
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details()
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "tiny"
    with pytest.raises(grpc.RpcError) as caught:
        server.predict.MultiInference(multi, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, _, answer = call_rest(server.rest, "POST", "/v1/models/tiny:regress", b'{"examples": [{"x": 1}]}')
    assert status == 400 and json.loads(answer)["error"] == "Expected one output Tensor."
    status, _, answer = call_rest(server.rest, "POST", "/v1/models/tiny:classify", b'{"examples": []}')
    assert status == 400 and "No classification inputs" in json.loads(answer)["error"]


def test_rest_limits(server):
    port = server.rest
    too_big = b'{"instances": ["' + b"x" * MAX_BYTES + b'"]}'
    status, content_type, body = call_rest(port, "POST", "/v1/models/tiny:predict", too_big)
    assert status == 413 and content_type == "application/json"
    assert "Request Entity Too Large" in json.loads(body)["error"]
    # chunked, without a Content-Length: the same answer
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/models/tiny:predict", body=iter([too_big[:1000], too_big[1000:]]),
                 encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 413 and "error" in json.loads(answer.read())
    conn.close()

    deep = b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    status, _, body = call_rest(port, "POST", "/v1/models/tiny:predict", deep)
    assert status == 400 and f"limit of {MAX_JSON_DEPTH}" in json.loads(body)["error"]


GARBAGE = [
    ("POST", "/v1/models/tiny:predict", b""),
    ("POST", "/v1/models/tiny:predict", b"\xff\xfe\x00garbage"),
    ("POST", "/v1/models/tiny:predict", b"[1, 2]"),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [NaN]}'),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [1e999999]}'),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [' + b"9" * 5000 + b"]}"),
    ("POST", "/v1/models/tiny:predict", b'{"signature_name": 5, "instances": ["a"]}'),
    ("POST", "/v1/models/tiny:predict", b'{"signature_name": "nope", "instances": ["a"]}'),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [{"b64": "!!"}]}'),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [[["a"]]]}'),
    ("POST", "/v1/models/tiny:predict", b'{"inputs": {"user_id": {"nested": {}}}}'),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [' + b'"a",' * 2000 + b'"a"]}'),
    ("POST", "/v1/models/tiny/versions/99999999999999999999999:predict", b'{"instances": ["a"]}'),
    ("POST", "/v1/models/tiny/versions/7:predict", b'{"instances": ["a"]}'),
    ("POST", "/v1/models/tiny/labels/%ff%fe:predict", b'{"instances": ["a"]}'),
    ("POST", "/v1/models/nope:predict", b'{"instances": ["a"]}'),
    ("POST", "/v1/models/tiny:explode", b"{}"),
    ("POST", "/v1/models/tiny:classify", b'{"signature_name": []}'),
    ("POST", "/v1/models/tiny:regress", b"{}"),
    ("GET", "/v1/models/tiny:predict", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny/versions/abc", None),
    ("GET", "/v1/models/tiny/labels/none", None),
    ("GET", "/v1/models/tiny/metadata/extra", None),
    ("PUT", "/v1/models/tiny", b"{}"),
    ("DELETE", "/v1/models/tiny", None),
    ("GET", "/", None),
    ("GET", "/monitoring/prometheus/metricsX", None),
]


@pytest.mark.parametrize("method, path, body", GARBAGE)
def test_no_input_gets_a_500(server, method, path, body):
    status, content_type, answer = call_rest(server.rest, method, path, body)
    assert 400 <= status < 500, (status, answer[:300])
    assert content_type == "application/json" and "error" in json.loads(answer)


def test_a_bad_request_line_is_answered_in_json(server):
    with socket.create_connection(("127.0.0.1", server.rest), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):  # the server closes the connection after an error
            chunks.append(chunk)
        answer = b"".join(chunks).decode("latin-1")
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "application/json" in head
    assert "error" in json.loads(body)


def test_status_over_grpc_while_serving(server):
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tiny"
    (entry,) = stub.GetModelStatus(request, timeout=30).model_version_status
    assert entry.version == 1 and entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_thread_flags_size_tensorflows_pools_before_anything_runs():
    """``--tensorflow_{intra,inter}_op_parallelism`` in a fresh process: applied before
    TensorFlow runs anything, a ServingError once it has (the pools are then fixed)."""
    import subprocess
    import sys

    code = (
        "import tensorflow as tf\n"
        "from serving.errors import ServingError\n"
        "from serving.server import configure_tensorflow_threads\n"
        "configure_tensorflow_threads(1, 2)\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
        "tf.constant(1.0) + 1.0\n"
        "try:\n"
        "    configure_tensorflow_threads(2, 0)\n"
        "except ServingError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    sizes, error = done.stdout.strip().splitlines()
    assert sizes == "1 2"
    assert error.startswith("cannot size TensorFlow's thread pools")


def test_negative_thread_flags_are_refused():
    with pytest.raises(ServingError, match="--tensorflow_intra_op_parallelism must be >= 0"):
        ServerOptions(model_base_path="m", tensorflow_intra_op_parallelism=-1).check()
