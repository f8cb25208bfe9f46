"""TensorProto <-> numpy, without TensorFlow: the codec of the server and the clients.

Works on any message with TensorProto's fields: ``tensorflow.TensorProto`` (the server,
the official stubs) and ``serving.wire.TensorProto`` (the TF-free clients) alike.

Two layouts, as TensorFlow writes them:

- ``"fields"``: values in the typed repeated field (``float_val``, ``string_val`` ...), as
  TF Serving answers (``Tensor::AsProtoField``);
- ``"content"``: numbers as raw little-endian bytes in ``tensor_content`` when there is
  more than one value, as ``tf.make_tensor_proto`` writes requests (strings and bools
  always use their typed field).

Strings decode to object arrays of ``bytes``. A single value fills a whole shape, as
``Tensor::FromProto`` allows. Costs are linear in the number of values; the only copies
are numpy's (``tensor_content`` is read with ``np.frombuffer``, no copy).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.status import RequestError, invalid
from serving.wire import DATA_TYPES

DT_FLOAT = DATA_TYPES["DT_FLOAT"]
DT_DOUBLE = DATA_TYPES["DT_DOUBLE"]
DT_INT32 = DATA_TYPES["DT_INT32"]
DT_UINT8 = DATA_TYPES["DT_UINT8"]
DT_INT16 = DATA_TYPES["DT_INT16"]
DT_INT8 = DATA_TYPES["DT_INT8"]
DT_STRING = DATA_TYPES["DT_STRING"]
DT_INT64 = DATA_TYPES["DT_INT64"]
DT_BOOL = DATA_TYPES["DT_BOOL"]
DT_UINT16 = DATA_TYPES["DT_UINT16"]
DT_HALF = DATA_TYPES["DT_HALF"]
DT_UINT32 = DATA_TYPES["DT_UINT32"]
DT_UINT64 = DATA_TYPES["DT_UINT64"]

# DataType -> numpy dtype (object for strings), and the repeated field holding values.
NUMPY_DTYPES: dict[int, Any] = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
    DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64,
    DT_BOOL: np.bool_, DT_UINT16: np.uint16, DT_HALF: np.float16, DT_UINT32: np.uint32,
    DT_UINT64: np.uint64,
}
VALUE_FIELDS = {
    DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
    DT_INT16: "int_val", DT_INT8: "int_val", DT_STRING: "string_val", DT_INT64: "int64_val",
    DT_BOOL: "bool_val", DT_UINT16: "int_val", DT_HALF: "half_val", DT_UINT32: "uint32_val",
    DT_UINT64: "uint64_val",
}
INTEGER_DTYPES = frozenset(
    {DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_INT64, DT_UINT16, DT_UINT32, DT_UINT64}
)
# TensorFlow's DataTypeString names (what its error messages say).
_NAMES = {
    DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
    DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_INT64: "int64",
    DT_BOOL: "bool", DT_UINT16: "uint16", DT_HALF: "half", DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}
_BY_NUMPY = {np.dtype(v): k for k, v in NUMPY_DTYPES.items() if v is not object}
# Types tf.make_tensor_proto writes to tensor_content (not bool, not strings).
_CONTENT_TYPES = frozenset(NUMPY_DTYPES) - {DT_STRING, DT_BOOL}
_LITTLE_ENDIAN = sys.byteorder == "little"


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` -> ``"float"``, as TensorFlow's DataTypeString (``"invalid"`` for 0)."""
    if dtype in _NAMES:
        return _NAMES[dtype]
    for name, number in DATA_TYPES.items():
        if number == dtype:
            return name.removeprefix("DT_").lower()
    return "invalid"


def numpy_name(dtype: int) -> str:
    """``DT_FLOAT`` -> ``"float32"``, the ``tf.DType.name`` clients show."""
    return {DT_FLOAT: "float32", DT_DOUBLE: "float64", DT_HALF: "float16"}.get(
        dtype, dtype_name(dtype)
    )


def dtype_of(array: np.ndarray) -> int:
    """The DataType of a numpy array (``U``/``S``/object arrays are strings)."""
    if array.dtype == object or array.dtype.kind in "US":
        return DT_STRING
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise invalid(f"numpy dtype {array.dtype} has no TensorFlow DataType here") from None


def to_ndarray(proto: Any) -> np.ndarray:
    """A TensorProto as a numpy array (strings: object array of ``bytes``).

    INVALID_ARGUMENT for an unsupported dtype, a negative dimension or a value count
    that does not fit the shape.
    """
    dtype = proto.dtype
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise invalid(f"tensors of dtype {dtype_name(dtype)} are not supported")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid(f"tensor shape {list(shape)} has a negative dimension")
    size = math.prod(shape)
    if dtype == DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = proto.string_val
    elif proto.tensor_content:
        item = np.dtype(np_dtype)
        content = proto.tensor_content
        if len(content) != size * item.itemsize:
            raise invalid(
                f"tensor_content holds {len(content)} bytes, shape {list(shape)} of "
                f"{dtype_name(dtype)} needs {size * item.itemsize}"
            )
        values = np.frombuffer(content, dtype=item.newbyteorder("<"))
    elif dtype == DT_HALF:
        values = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(getattr(proto, VALUE_FIELDS[dtype]), dtype=np_dtype)
    if values.size != size:
        if values.size == 1 and size > 1:
            values = np.full(size, values[0], dtype=values.dtype)
        elif values.size == 0:  # Tensor::FromProto: no values = default values
            values = np.full(size, b"", dtype=object) if dtype == DT_STRING else np.zeros(size, np_dtype)
        else:
            raise invalid(f"tensor has {values.size} values but shape {list(shape)} needs {size}")
    return values.reshape(shape)


def fill_tensor_proto(
    proto: Any, array: np.ndarray, dtype: int | None = None, layout: str = "fields"
) -> Any:
    """Writes ``array`` into an empty TensorProto ``proto``; returns ``proto``.

    Args:
      proto: an empty ``TensorProto`` (official or ``serving.wire``).
      array: the values; strings as ``bytes`` or ``str`` (UTF-8 encoded).
      dtype: the DataType to write (default: from the array).
      layout: ``"fields"`` (typed repeated field, TF Serving's answers) or ``"content"``
        (``tensor_content`` for more than one number, ``tf.make_tensor_proto``'s layout).
    """
    array = np.asarray(array)
    dtype = dtype_of(array) if dtype is None else dtype
    proto.dtype = dtype
    proto.tensor_shape.SetInParent()  # present even for a scalar, as TensorFlow writes it
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    if dtype == DT_STRING:
        flat = array.reshape(-1).tolist()
        if flat and not all(type(v) is bytes for v in flat):
            flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat]
        proto.string_val.extend(flat)
        return proto
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise invalid(f"tensors of dtype {dtype_name(dtype)} are not supported")
    values = array.astype(np_dtype, copy=False)
    if layout == "content" and dtype in _CONTENT_TYPES and values.size > 1:
        if not _LITTLE_ENDIAN or values.dtype.byteorder == ">":
            values = values.astype(values.dtype.newbyteorder("<"))
        proto.tensor_content = values.tobytes()
        return proto
    if dtype == DT_HALF:
        proto.half_val.extend(values.reshape(-1).view(np.uint16).tolist())
    else:
        getattr(proto, VALUE_FIELDS[dtype]).extend(values.reshape(-1).tolist())
    return proto


def shape_of(tensor_shape: Any) -> list[int] | None:
    """A TensorShapeProto as a list (-1 for an unknown dim); None for unknown rank."""
    if tensor_shape.unknown_rank:
        return None
    return [d.size for d in tensor_shape.dim]


def format_shape(shape: Sequence[int] | None) -> str:
    """``[2, -1]`` -> ``"[2,?]"``, as TensorFlow prints partial shapes."""
    if shape is None:
        return "[?]"
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


__all__ = [
    "DT_BOOL", "DT_DOUBLE", "DT_FLOAT", "DT_INT32", "DT_INT64", "DT_STRING", "NUMPY_DTYPES",
    "RequestError", "dtype_name", "dtype_of", "fill_tensor_proto", "format_shape",
    "numpy_name", "shape_of", "to_ndarray",
]
