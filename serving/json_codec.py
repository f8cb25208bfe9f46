"""TF Serving's REST JSON <-> numpy, without TensorFlow (``json_tensor.cc`` rules).

- ``parse_body``: a request body -> a JSON object, refusing bodies nested deeper than
  ``MAX_JSON_DEPTH`` (checked on the raw text before parsing, in C-speed passes);
- ``request_inputs``: ``{"instances": [...]}`` (row format) or ``{"inputs": ...}``
  (columnar) -> numpy inputs of a signature, with TF Serving's error wording;
- ``outputs_to_json``: numpy outputs -> ``{"predictions": [...]}`` or ``{"outputs": ...}``
  in one ``json.dumps``: float32 values with at most 9 significant digits (what TF
  Serving's ``%.9g`` writes) that read back to the same float32, float64 as ``repr``,
  NaN/Infinity as TF Serving writes them, strings as JSON strings, outputs whose name ends
  in ``_bytes`` as ``{"b64": ...}``.

Every error is a ``RequestError`` (INVALID_ARGUMENT unless stated), never an exception
the server would answer with a 500. Costs are linear in the body size.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import orjson

from serving.status import RequestError, invalid
from serving.tensors import (
    DT_BOOL,
    DT_FLOAT,
    DT_STRING,
    INTEGER_DTYPES,
    NUMPY_DTYPES,
    dtype_name,
    format_shape,
)

# Deeper JSON is refused with 400 before it is parsed. Tensors of rank up to 32 fit with
# room for the enclosing objects; Python's parser would otherwise recurse until it hits
# the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
BYTES_SUFFIX = "_bytes"
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_ERROR_TEXT_LIMIT = 200


def json_text(value: Any) -> str:
    """A JSON value as TF Serving prints it in error messages (compact; long ones cut)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=True)
    except (RecursionError, ValueError):
        text = "<unprintable>"
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[:_ERROR_TEXT_LIMIT] + "..."
    return text


def nesting_depth(body: bytes) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (brackets inside strings ignored)."""
    bare = _QUOTED.sub(b'""', body)
    codes = np.frombuffer(bare, dtype=np.uint8)
    steps = (codes == ord("[")).astype(np.int32) + (codes == ord("{"))
    steps -= (codes == ord("]")).astype(np.int32) + (codes == ord("}"))
    return int(np.cumsum(steps).max(initial=0))


def parse_body(body: bytes) -> dict:
    """A predict/classify body as a JSON object; INVALID_ARGUMENT for anything else."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    openers = body.count(b"[") + body.count(b"{")  # fewer openers than the limit: no scan
    depth = nesting_depth(body) if openers > MAX_JSON_DEPTH else openers
    if depth > MAX_JSON_DEPTH:
        raise invalid(
            f"JSON Parse error: nesting depth {depth} exceeds the limit of {MAX_JSON_DEPTH}"
        )
    try:
        document = json.loads(body)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, 4300+ digit integers
        raise invalid(f"JSON Parse error: {error}") from None
    except RecursionError:  # unreachable after the depth check; never a 500
        raise invalid(f"JSON Parse error: nested deeper than {MAX_JSON_DEPTH}") from None
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {json_text(document)} Is not object")
    return document


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value: Any) -> bool:
    """Whether a JSON value is TF Serving's ``{"b64": "..."}`` binary string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value: Any, dtype: int) -> Any:
    """One JSON scalar converted for ``dtype``; type errors worded as json_tensor.cc."""

    def type_error() -> RequestError:
        return invalid(
            f"JSON Value: {json_text(value)} Type: {_json_type(value)} is not of expected "
            f"type: {dtype_name(dtype)}"
        )

    if dtype == DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not is_b64(value):
                raise invalid(f"JSON Value: {json_text(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
        raise type_error()
    if dtype == DT_BOOL:
        if isinstance(value, bool):
            return value
        raise type_error()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error()
    if dtype in INTEGER_DTYPES:
        if not isinstance(value, int):
            raise type_error()
        info = np.iinfo(NUMPY_DTYPES[dtype])
        if not info.min <= value <= info.max:
            raise type_error()
        return value
    if dtype == DT_FLOAT and math.isfinite(value) and abs(value) > 3.4028234663852886e38:
        raise invalid(
            f"Cannot convert JSON value: {json_text(value)} to float without loss of precision."
        )
    return value


def to_ndarray(value: Any, dtype: int) -> np.ndarray:
    """A (nested-list) JSON value as a dense numpy array of ``dtype``.

    The shape comes from the first element at every level; every list must match it.
    Ranks above ``MAX_JSON_DEPTH`` cannot occur (``parse_body`` refused them).
    """
    if dtype not in NUMPY_DTYPES:
        raise RequestError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {json_text(value)} to type: {dtype_name(dtype)}",
        )
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    rank = len(shape)
    flat: list[Any] = []

    def fill(item: Any, level: int) -> None:
        if not isinstance(item, list):
            if level != rank:
                raise invalid(
                    f"JSON Value: {json_text(item)} found at incorrect level: {level + 1} in "
                    f"the JSON DOM. Expected at level: {rank}"
                )
            flat.append(_leaf(item, dtype))
            return
        if level >= rank:
            raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {shape[level]}"
            )
        if level == rank - 1 and dtype == DT_STRING and all(type(v) is str for v in item):
            flat.extend(v.encode("utf-8") for v in item)  # the common case, no per-leaf call
            return
        for element in item:
            fill(element, level + 1)

    fill(value, 0)
    np_dtype = NUMPY_DTYPES[dtype]
    if np_dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = np.asarray(flat, dtype=np_dtype)
    return array.reshape(shape)


def request_inputs(
    body: Mapping[str, Any], input_dtypes: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], str]:
    """The inputs of a predict body and its format (``"row"`` or ``"columnar"``).

    Args:
      body: the parsed JSON object.
      input_dtypes: the signature's input names -> DataType.
    """
    names = sorted(input_dtypes)
    if "instances" in body and "inputs" in body:
        raise invalid(
            f"JSON Value: {json_text(body)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if "instances" in body:
        return _row_inputs(body, body["instances"], input_dtypes, names), "row"
    if "inputs" in body:
        columnar = body["inputs"]
        if not isinstance(columnar, dict) or is_b64(columnar):
            if len(names) > 1:
                raise invalid(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            return {names[0]: to_ndarray(columnar, input_dtypes[names[0]])}, "columnar"
        inputs = {}
        for key in names:
            if key not in columnar:
                raise invalid(f"Missing named input: {key} in 'inputs' object.")
            inputs[key] = to_ndarray(columnar[key], input_dtypes[key])
        return inputs, "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def _row_inputs(body, instances, input_dtypes, names) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {json_text(body)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {json_text(body)} No values in 'instances' array")
    named = isinstance(instances[0], dict) and not is_b64(instances[0])
    if not named and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if not named and input_dtypes[names[0]] == DT_STRING and all(type(v) is str for v in instances):
        array = np.empty(len(instances), dtype=object)  # a list of ids: the common case
        array[:] = [v.encode("utf-8") for v in instances]
        return {names[0]: array}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, element in enumerate(instances):
        element_named = isinstance(element, dict) and not is_b64(element)
        if named and not element_named:
            raise invalid(f"Expecting object but got list at item {index} of input list")
        if not named and element_named:
            raise invalid(f"Expecting value/list but got object at item {index} of input list")
        items = element if named else {names[0]: element}
        for key, item in items.items():
            if key not in input_dtypes:
                raise invalid(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {key}"
                )
            try:
                array = to_ndarray(item, input_dtypes[key])
            except RequestError as error:
                where = f"{index} key: {key}" if named else f"{index}"
                raise invalid(
                    f"Failed to process element: {where} of 'instances' list. "
                    f"Error: {error.message}"
                ) from None
            if rows[key] and rows[key][0].shape != array.shape:
                raise invalid(
                    f"Expecting shape {format_shape(rows[key][0].shape)} but got: "
                    f"{format_shape(array.shape)}"
                )
            rows[key].append(array)
        if set(items) != set(names):
            raise invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{json_text(element)} must only have keys: {','.join(names)}"
            )
    return {key: np.stack(arrays) for key, arrays in rows.items()}


def _short_floats(values: np.ndarray) -> np.ndarray:
    """Float values as the float64s whose ``repr`` is at most 9 (float32) or 17 significant
    digits and reads back to the same value, so one ``json.dumps`` writes them short.

    A float32 round-trips through 9 significant digits (TF Serving writes ``%.9g`` when
    ``%g`` does not round-trip): ``x`` is rounded to 9 digits in float64 (an exact power
    of ten divides an exact integer, so the result is the float64 nearest that decimal);
    the few values the arithmetic rounds wrongly keep their exact float64 value.
    """
    wide = values.astype(np.float64)
    if values.dtype != np.float32:
        return wide  # float64 reprs are already the shortest that round-trip
    finite = np.isfinite(wide) & (wide != 0)
    exponent = np.floor(np.log10(np.abs(wide, where=finite, out=np.ones_like(wide))))
    digits = (8 - exponent).astype(np.int64)
    out = wide.copy()
    for k in np.unique(digits[finite]).tolist():  # a few distinct magnitudes per answer
        rows = finite & (digits == k)
        scaled = np.round(wide[rows] * 10.0**k) if k >= 0 else np.round(wide[rows] / 10.0**-k)
        out[rows] = scaled / 10.0**k if k >= 0 else scaled * 10.0**-k
    bad = out.astype(np.float32) != values
    out[bad] = wide[bad]
    return out


def _column(array: np.ndarray, as_bytes: bool, numpy_ok: bool) -> Any:
    """An output ready for the JSON writer: the numpy array itself when orjson can write it
    (numbers, bools), else nested Python lists (strings, b64 objects, non-finite floats)."""
    if array.dtype == object or array.dtype.kind == "S":
        flat = array.reshape(-1).tolist()
        if as_bytes:
            values = [{"b64": base64.b64encode(v).decode("ascii")} for v in flat]
        else:
            try:
                values = [v.decode() for v in flat]
            except (AttributeError, UnicodeDecodeError):  # not bytes, or not UTF-8
                values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
        if array.ndim == 1:
            return values
        if array.ndim == 2:
            width = array.shape[1]
            return [values[i : i + width] for i in range(0, len(values), width)] if width else (
                [[] for _ in range(array.shape[0])]
            )
        nested = np.empty(len(values), dtype=object)
        nested[:] = values
        return nested.reshape(array.shape).tolist()
    if numpy_ok:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return _short_floats(array).tolist()
    return array.tolist()


def _dumps(outputs: Mapping[str, np.ndarray], build) -> str:
    """orjson (numpy arrays written in C, float32 as its shortest round-trip text); the
    standard library when a float is NaN or infinite, which orjson would write as null
    and TF Serving writes as NaN / Infinity."""
    finite = all(
        np.isfinite(v).all() for v in outputs.values() if np.issubdtype(v.dtype, np.floating)
    )
    if finite:
        return orjson.dumps(build(True), option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")
    return json.dumps(build(False), ensure_ascii=False)


def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """A predict answer: ``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)

    def columns(numpy_ok: bool) -> dict[str, Any]:
        return {n: _column(outputs[n], n.endswith(BYTES_SUFFIX), numpy_ok) for n in names}

    if fmt == "columnar":
        def build(numpy_ok: bool) -> dict:
            values = columns(numpy_ok)
            return {"outputs": values[names[0]] if len(names) == 1 else values}

        return _dumps(outputs, build)
    batch = None
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch is not None and batch != shape[0]:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]

    def build_rows(numpy_ok: bool) -> dict:
        values = columns(numpy_ok)
        if len(names) == 1:
            return {"predictions": values[names[0]]}
        return {"predictions": [{n: values[n][i] for n in names} for i in range(batch)]}

    return _dumps(outputs, build_rows)
