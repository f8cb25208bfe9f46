"""serving.tensors and serving.json_codec in process: every dtype, strings, shapes, both
TensorProto layouts, the REST row and columnar formats, base64, and every refusal."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving import json_codec, tensors
from serving.status import RequestError
from serving.wire import TensorProto

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
           np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def _random(dtype, shape, rng):
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("layout", ["fields", "content"])
@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 3), (2, 0, 4)])
def test_numeric_round_trip_and_tensorflow_agrees(dtype, layout, shape):
    rng = np.random.default_rng(0)
    array = _random(dtype, shape, rng)
    proto = tensors.fill_tensor_proto(tensor_pb2.TensorProto(), array, layout=layout)
    back = tensors.to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    # TensorFlow reads our proto to the same values, and we read TensorFlow's.
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(tensors.to_ndarray(tf.make_tensor_proto(array)), array)


@pytest.mark.parametrize("layout", ["fields", "content"])
def test_strings_bytes_and_unicode(layout):
    values = np.array([["ab", "ü\x00z"], ["", "x" * 300]], dtype=object)
    proto = tensors.fill_tensor_proto(TensorProto(), values, layout=layout)
    assert proto.dtype == tensors.DT_STRING and len(proto.string_val) == 4
    back = tensors.to_ndarray(proto)
    assert back.dtype == object and back.shape == (2, 2)
    assert back.tolist() == [[b"ab", "ü\x00z".encode()], [b"", b"x" * 300]]
    assert tf.make_ndarray(tensor_pb2.TensorProto.FromString(proto.SerializeToString())).tolist() == back.tolist()
    numpy_unicode = np.array(["a", "bc"])  # dtype <U2
    assert tensors.to_ndarray(tensors.fill_tensor_proto(TensorProto(), numpy_unicode)).tolist() == [b"a", b"bc"]


def test_one_value_fills_the_shape_and_no_values_means_defaults():
    proto = tensor_pb2.TensorProto(dtype=tensors.DT_FLOAT, float_val=[2.5])
    proto.tensor_shape.dim.add().size = 3
    assert tensors.to_ndarray(proto).tolist() == [2.5, 2.5, 2.5]
    empty = tensor_pb2.TensorProto(dtype=tensors.DT_INT32)
    empty.tensor_shape.dim.add().size = 2
    assert tensors.to_ndarray(empty).tolist() == [0, 0]
    assert tf.make_ndarray(empty).tolist() == [0, 0]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda p: (setattr(p, "dtype", 14), p.tensor_shape.dim.add()), "not supported"),  # bfloat16
        (lambda p: (setattr(p, "dtype", 1), setattr(p.tensor_shape.dim.add(), "size", -1)), "negative"),
        (lambda p: (setattr(p, "dtype", 1), setattr(p.tensor_shape.dim.add(), "size", 3),
                    p.float_val.extend([1, 2])), "needs 3"),
        (lambda p: (setattr(p, "dtype", 1), setattr(p.tensor_shape.dim.add(), "size", 3),
                    setattr(p, "tensor_content", b"\x00" * 8)), "needs 12"),
        (lambda p: (setattr(p, "dtype", 7), setattr(p.tensor_shape.dim.add(), "size", 3),
                    p.string_val.extend([b"a", b"b"])), "needs 3"),
    ],
)
def test_malformed_tensors_are_invalid_argument(build, message):
    proto = tensor_pb2.TensorProto()
    build(proto)
    with pytest.raises(RequestError, match=message) as caught:
        tensors.to_ndarray(proto)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_dtype_names_are_tensorflows():
    for number, np_dtype in tensors.NUMPY_DTYPES.items():
        assert tensors.dtype_name(number) == tf.dtypes.as_dtype(number).name.replace("float32", "float").replace("float64", "double").replace("float16", "half")
        if np_dtype is not object:
            assert tensors.numpy_name(number) == tf.dtypes.as_dtype(number).name
    assert tensors.format_shape([2, -1]) == "[2,?]" and tensors.format_shape(None) == "[?]"


# ----------------------------------------------------------------------------------- JSON

STRING, FLOAT, INT32, BOOL = tensors.DT_STRING, tensors.DT_FLOAT, tensors.DT_INT32, tensors.DT_BOOL


def test_row_and_columnar_formats():
    dtypes = {"user_id": STRING, "item_ids": STRING}
    row, fmt = json_codec.request_inputs(
        {"instances": [{"user_id": "u1", "item_ids": ["a", "b"]},
                       {"user_id": "u2", "item_ids": ["c", {"b64": "ZA=="}]}]}, dtypes,
    )
    assert fmt == "row"
    assert row["user_id"].tolist() == [b"u1", b"u2"]
    assert row["item_ids"].tolist() == [[b"a", b"b"], [b"c", b"d"]]
    col, fmt = json_codec.request_inputs(
        {"inputs": {"user_id": ["u1", "u2"], "item_ids": [["a", "b"], ["c", "d"]]}}, dtypes
    )
    assert fmt == "columnar" and col["item_ids"].tolist() == row["item_ids"].tolist()
    single, _ = json_codec.request_inputs({"instances": ["u1", "u2"]}, {"user_id": STRING})
    assert single["user_id"].dtype == object and single["user_id"].tolist() == [b"u1", b"u2"]
    numbers, _ = json_codec.request_inputs({"inputs": [[1, 2], [3, 4]]}, {"x": INT32})
    assert numbers["x"].dtype == np.int32 and numbers["x"].shape == (2, 2)
    flags, _ = json_codec.request_inputs({"instances": [True, False]}, {"b": BOOL})
    assert flags["b"].dtype == np.bool_


@pytest.mark.parametrize(
    "body, dtypes, message",
    [
        ({"instances": ["a"], "inputs": ["a"]}, {"x": STRING}, "only one of"),
        ({}, {"x": STRING}, "Missing 'inputs' or 'instances'"),
        ({"instances": "a"}, {"x": STRING}, "list/array"),
        ({"instances": []}, {"x": STRING}, "No values"),
        ({"instances": ["a"]}, {"x": STRING, "y": STRING}, "expecting list of objects"),
        ({"instances": [{"x": "a"}, "b"]}, {"x": STRING}, "Expecting object"),
        ({"instances": [{"z": "a"}]}, {"x": STRING}, "does not have named input: z"),
        ({"instances": [{"x": "a", "y": ["b"]}, {"x": "c", "y": ["d", "e"]}]},
         {"x": STRING, "y": STRING}, "Expecting shape"),
        ({"inputs": {"x": ["a"]}}, {"x": STRING, "y": STRING}, "Missing named input: y"),
        ({"inputs": [1, 2]}, {"x": STRING}, "is not of expected type: string"),
        ({"inputs": [1.5]}, {"x": INT32}, "is not of expected type: int32"),
        ({"inputs": [2**40]}, {"x": INT32}, "is not of expected type: int32"),
        ({"inputs": [1e39]}, {"x": FLOAT}, "without loss of precision"),
        ({"inputs": [1, True]}, {"x": FLOAT}, "is not of expected type: float"),
        ({"inputs": [[1, 2], [3]]}, {"x": FLOAT}, "unexpected size"),
        ({"inputs": [[1, 2], 3]}, {"x": FLOAT}, "incorrect level"),
        ({"inputs": [1, [2]]}, {"x": FLOAT}, "unexpected level"),
        ({"inputs": [{"b64": "@@"}]}, {"x": STRING}, "Unable to base64 decode"),
        ({"inputs": [{"b64": "YQ==", "extra": 1}]}, {"x": STRING}, "base64 data"),
        ({"inputs": [None]}, {"x": BOOL}, "Type: Null"),
    ],
)
def test_malformed_requests_are_invalid_argument(body, dtypes, message):
    with pytest.raises(RequestError, match=message) as caught:
        json_codec.request_inputs(body, dtypes)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_parse_body_limits():
    for bad, message in ((b"", "empty"), (b"[1]", "Is not object"), (b"{", "Parse error"),
                         (b"\xff\xfe", "Parse error"), (b'"text"', "Is not object")):
        with pytest.raises(RequestError, match=message):
            json_codec.parse_body(bad)
    depth = json_codec.MAX_JSON_DEPTH
    ok = b'{"inputs": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"
    assert json_codec.nesting_depth(ok) == depth
    json_codec.parse_body(ok)
    for deep in (b'{"a": ' + b"[" * depth + b"]" * depth + b"}", b"[" * 10_000, b"{" * 100_000):
        with pytest.raises(RequestError, match="nesting depth") as caught:
            json_codec.parse_body(deep)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # Brackets inside strings (escaped quotes included) do not count.
    assert json_codec.nesting_depth(b'{"a": "[[[[\\"[[[[", "b": [1]}') == 2


def test_outputs_to_json_row_and_columnar_read_back():
    outputs = {
        "item_ids": np.array([[b"a", "é\"".encode()], [b"c", b""]], dtype=object),
        "scores": np.array([[0.1, 1 / 3], [np.float32(3.4e38), -0.0]], dtype=np.float32),
        "known_user": np.array([True, False]),
        "top": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "raw_bytes": np.array([b"\x00\xff", b"z"], dtype=object),
    }
    row = json.loads(json_codec.outputs_to_json(outputs, "row"))["predictions"]
    col = json.loads(json_codec.outputs_to_json(outputs, "columnar"))["outputs"]
    assert row[0]["item_ids"] == ["a", 'é"'] and col["item_ids"][1] == ["c", ""]
    # Every float reads back to the same float32 (shortest %g, else %.9g).
    np.testing.assert_array_equal(np.array(col["scores"], np.float32), outputs["scores"])
    np.testing.assert_array_equal(np.array([r["scores"] for r in row], np.float32), outputs["scores"])
    assert col["known_user"] == [True, False] and row[1]["top"] == [3, 4]
    assert col["raw_bytes"][0] == {"b64": "AP8="}
    single = json.loads(json_codec.outputs_to_json({"e": np.zeros((2, 3), np.float32)}, "row"))
    assert single == {"predictions": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]}
    specials = json_codec.outputs_to_json({"x": np.array([np.nan, np.inf], np.float32)}, "columnar")
    assert "NaN" in specials and "Infinity" in specials
    with pytest.raises(RequestError, match="inconsistent batch size"):
        json_codec.outputs_to_json({"a": np.zeros(2), "b": np.zeros(3)}, "row")
