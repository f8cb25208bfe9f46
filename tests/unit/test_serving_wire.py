"""serving.wire against the official messages: the same fields, the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from serving import wire
from serving.tensors import fill_tensor_proto, to_ndarray

OFFICIAL = {
    "TensorProto": tensor_pb2.TensorProto,
    "TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
    "ModelSpec": model_pb2.ModelSpec,
    "PredictRequest": predict_pb2.PredictRequest,
    "PredictResponse": predict_pb2.PredictResponse,
    "TensorInfo": meta_graph_pb2.TensorInfo,
    "SignatureDef": meta_graph_pb2.SignatureDef,
    "SignatureDefMap": get_model_metadata_pb2.SignatureDefMap,
    "GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
    "GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
    "StatusProto": status_pb2.StatusProto,
    "ModelVersionStatus": get_model_status_pb2.ModelVersionStatus,
    "GetModelStatusRequest": get_model_status_pb2.GetModelStatusRequest,
    "GetModelStatusResponse": get_model_status_pb2.GetModelStatusResponse,
}


def _shape(field) -> tuple:
    value_type = field.message_type.name if field.message_type else None
    enum_type = field.enum_type.name if field.enum_type else None
    return (field.number, field.type, field.is_repeated, field.is_packed, value_type, enum_type,
            field.containing_oneof.name if field.containing_oneof else None)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_every_field_matches_the_official_descriptor(name):
    ours = {f.name: f for f in getattr(wire, name).DESCRIPTOR.fields}
    theirs = {f.name: f for f in OFFICIAL[name].DESCRIPTOR.fields}
    assert set(ours) <= set(theirs), f"{name}: fields the original lacks {set(ours) - set(theirs)}"
    for field_name, field in ours.items():
        assert _shape(field) == _shape(theirs[field_name]), f"{name}.{field_name}"
    assert wire.PACKAGE != "tensorflow.serving"
    assert getattr(wire, name).DESCRIPTOR.full_name.startswith("tfrs_cosine.wire.")


def test_enums_match():
    data_type = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name["dtype"].enum_type
    assert {v.name: v.number for v in data_type.values if v.number < 100 and not v.name.endswith("_REF")} \
        .items() >= wire.DATA_TYPES.items()
    states = get_model_status_pb2.ModelVersionStatus.State
    assert {n: states.Value(n) for n in states.keys()} == wire.VERSION_STATES


ARRAYS = [
    np.array([b"u1", b"u2"], dtype=object),
    np.array([["i1", "i2", "i3"]]),
    np.array([[0.5, -1.25], [3.0, 1e-8]], dtype=np.float32),
    np.arange(5, dtype=np.int64),
    np.array([7], dtype=np.int32),
    np.array(2.5, dtype=np.float64),
    np.array([True, False, True]),
]


def test_client_requests_are_byte_identical_to_tf_make_tensor_proto():
    official = predict_pb2.PredictRequest()
    ours = wire.PredictRequest()
    for request in (official, ours):
        request.model_spec.name = "recsys"
        request.model_spec.version.value = 7
        request.model_spec.signature_name = "explain"
        request.output_filter.extend(["cosine", "dot"])
    for index, array in enumerate(ARRAYS):
        value = array
        if array.dtype.kind == "U":
            value = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
        official.inputs[f"x{index}"].CopyFrom(tf.make_tensor_proto(value))
        fill_tensor_proto(ours.inputs[f"x{index}"], array, layout="content")
    assert ours.SerializeToString(deterministic=True) == official.SerializeToString(deterministic=True)
    label = wire.ModelSpec(name="m", version_label="stable")
    assert label.SerializeToString() == model_pb2.ModelSpec(name="m", version_label="stable").SerializeToString()


def test_server_answers_parse_into_wire_messages_unchanged():
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "recsys"
    response.model_spec.version.value = 3
    response.model_spec.signature_name = "serving_default"
    for index, array in enumerate(ARRAYS):
        fill_tensor_proto(response.outputs[f"y{index}"], array, layout="fields")
    data = response.SerializeToString(deterministic=True)
    parsed = wire.PredictResponse.FromString(data)
    assert parsed.SerializeToString(deterministic=True) == data
    for index, array in enumerate(ARRAYS):
        expected = array.astype(object) if array.dtype.kind == "U" else array
        got = to_ndarray(parsed.outputs[f"y{index}"])
        if array.dtype.kind == "U":
            got = np.vectorize(lambda b: b.decode(), otypes=[object])(got)
        np.testing.assert_array_equal(got, expected)


def test_metadata_and_status_answers():
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["user_id"].name = "serving_default_user_id:0"
    signature.inputs["user_id"].dtype = 7
    signature.inputs["user_id"].tensor_shape.dim.add().size = -1
    signature.inputs["user_id"].coo_sparse.values_tensor_name = "kept as an unknown field"
    metadata = get_model_metadata_pb2.GetModelMetadataResponse()
    metadata.model_spec.name = "recsys"
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    signature_map.signature_def["serving_default"].CopyFrom(signature)
    metadata.metadata["signature_def"].Pack(signature_map)
    data = metadata.SerializeToString(deterministic=True)
    parsed = wire.GetModelMetadataResponse.FromString(data)
    assert parsed.SerializeToString(deterministic=True) == data
    packed = parsed.metadata["signature_def"]
    assert packed.type_url.endswith("/tensorflow.serving.SignatureDefMap")
    ours = wire.SignatureDefMap.FromString(packed.value).signature_def["serving_default"]
    assert ours.inputs["user_id"].dtype == 7 and ours.inputs["user_id"].tensor_shape.dim[0].size == -1

    status = get_model_status_pb2.GetModelStatusResponse()
    entry = status.model_version_status.add(version=2, state=30)
    entry.status.error_code = 5
    entry.status.error_message = "gone"
    data = status.SerializeToString()
    parsed = wire.GetModelStatusResponse.FromString(data)
    assert parsed.SerializeToString() == data
    assert parsed.model_version_status[0].status.error_message == "gone"


def test_method_paths_are_the_official_stubs():
    class Recorder:
        def __init__(self):
            self.paths = {}

        def unary_unary(self, path, request_serializer=None, response_deserializer=None, **_):
            self.paths[path.rsplit("/", 1)[1]] = (path, response_deserializer)

    channel = Recorder()
    prediction_service_pb2_grpc.PredictionServiceStub(channel)
    model_service_pb2_grpc.ModelServiceStub(channel)
    for name, (path, _request_type, response_type) in wire.METHODS.items():
        official_path, deserializer = channel.paths[name]
        assert path == official_path
        assert deserializer.__self__.DESCRIPTOR.name == response_type.DESCRIPTOR.name
