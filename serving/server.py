"""``tfrs-cosine serve``: a TF Serving-compatible model server.

For machines without ``tensorflow_model_server`` or without a ScaNN-linked build. It
speaks TF Serving's protocol, so the same client code runs against either server:

- gRPC ``tensorflow.serving.PredictionService`` (``Predict``, ``GetModelMetadata``;
  ``Classify``, ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED) and
  ``tensorflow.serving.ModelService.GetModelStatus``, implemented on the servicer base
  classes and messages of ``tensorflow-serving-api``;
- the REST API on a WSGI app served by waitress: ``GET /v1/models/NAME[/versions/N|
  /labels/L][/metadata]`` and ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``
  with the row (``instances``) and columnar (``inputs``) formats.

The server is generic over SavedModels: it serves each version's ``signature_def`` map
(read from ``saved_model.pb``) by calling the matching concrete function of
``tf.saved_model.load``. ScaNN ops are registered (``export.scann_ops``) before any load.

Versions: the model's base path is polled every ``file_system_poll_wait_seconds``; a new
version folder is loaded in the background once its contents stopped changing for one
poll, warmed up (``assets.extra/tf_serving_warmup_requests`` when present, else one
synthetic call per signature), and only then swapped in; requests already running finish
on the version they started on. A version that fails to load or warm up is reported by
GetModelStatus (state END with the error) and the previous version keeps serving; it is
tried again only when its folder changes.

Error codes and messages follow TF Serving's sources (``predict_util.cc``,
``json_tensor.cc``, ``get_model_status_impl.cc``, ``http_rest_api_handler.cc``,
``server_core.cc``, ``shared_batch_scheduler.h``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError

log = logging.getLogger("tfrs_cosine.serving")

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024

# ModelVersionStatus.State values (get_model_status.proto).
START = get_model_status_pb2.ModelVersionStatus.START
LOADING = get_model_status_pb2.ModelVersionStatus.LOADING
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
UNLOADING = get_model_status_pb2.ModelVersionStatus.UNLOADING
END = get_model_status_pb2.ModelVersionStatus.END

# DataType -> numpy dtype, and the TensorProto field that carries its values.
_NUMPY_DTYPES: dict[int, Any] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_STRING: object,
}
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}
_INTEGER_DTYPES = {
    types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8,
    types_pb2.DT_INT64, types_pb2.DT_UINT32, types_pb2.DT_UINT64,
}

# gRPC status -> HTTP status, as http_server.cc's ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: "200 OK",
    grpc.StatusCode.CANCELLED: "499 Client Closed Request",
    grpc.StatusCode.UNKNOWN: "500 Internal Server Error",
    grpc.StatusCode.INVALID_ARGUMENT: "400 Bad Request",
    grpc.StatusCode.DEADLINE_EXCEEDED: "504 Gateway Timeout",
    grpc.StatusCode.NOT_FOUND: "404 Not Found",
    grpc.StatusCode.ALREADY_EXISTS: "409 Conflict",
    grpc.StatusCode.PERMISSION_DENIED: "403 Forbidden",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "429 Too Many Requests",
    grpc.StatusCode.FAILED_PRECONDITION: "400 Bad Request",
    grpc.StatusCode.ABORTED: "409 Conflict",
    grpc.StatusCode.OUT_OF_RANGE: "400 Bad Request",
    grpc.StatusCode.UNIMPLEMENTED: "501 Not Implemented",
    grpc.StatusCode.INTERNAL: "500 Internal Server Error",
    grpc.StatusCode.UNAVAILABLE: "503 Service Unavailable",
    grpc.StatusCode.DATA_LOSS: "500 Internal Server Error",
    grpc.StatusCode.UNAUTHENTICATED: "401 Unauthorized",
}
# tensorflow.error.Code number -> grpc.StatusCode (the numbers are the same).
_GRPC_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class RequestError(Exception):
    """A request the server answers with a non-OK status (never a server failure)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- tensors


def dtype_name(dtype: int) -> str:
    """``types_pb2.DT_FLOAT`` -> ``"float"`` (TensorFlow's DataTypeString)."""
    return tf.dtypes.as_dtype(dtype).name if dtype else "invalid"


def shape_of(info_shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """A TensorShapeProto as a list with -1 for unknown dims; None for unknown rank."""
    if info_shape.unknown_rank:
        return None
    return [int(d.size) for d in info_shape.dim]


def format_shape(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto (``*_val`` fields or ``tensor_content``) as a numpy array.

    Strings come back as an object array of ``bytes``. A single value fills the whole
    shape, as TensorFlow's ``Tensor::FromProto`` allows.
    """
    dtype = proto.dtype
    if dtype not in _NUMPY_DTYPES:
        raise _invalid(f"tensors of dtype {dtype_name(dtype)} are not supported")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise _invalid(f"tensor shape {list(shape)} has a negative dimension")
    size = math.prod(shape)
    if dtype == types_pb2.DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif proto.tensor_content:
        np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        if len(proto.tensor_content) != size * np_dtype.itemsize:
            raise _invalid(
                f"tensor_content holds {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(dtype)} needs {size * np_dtype.itemsize}"
            )
        values = np.frombuffer(proto.tensor_content, dtype=np_dtype)
    else:
        values = np.asarray(getattr(proto, _VALUE_FIELDS[dtype]), dtype=_NUMPY_DTYPES[dtype])
    if values.size != size:
        if values.size == 1 and size > 1:
            values = np.full(size, values[0], dtype=values.dtype)
        else:
            raise _invalid(
                f"tensor has {values.size} values but shape {list(shape)} needs {size}"
            )
    return values.reshape(shape)


def ndarray_to_tensor_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    """A numpy array as a TensorProto with the values in the typed ``*_val`` field.

    That is the layout TF Serving answers with (``Tensor::AsProtoField``).
    """
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = int(size)
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(
            [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat.tolist()]
        )
    else:
        getattr(proto, _VALUE_FIELDS[dtype]).extend(flat.tolist())
    return proto


# --------------------------------------------------------------------------- servables


@dataclass(frozen=True)
class Signature:
    """One servable signature: its SignatureDef and the concrete function that runs it."""

    name: str
    signature_def: meta_graph_pb2.SignatureDef
    function: Any  # a ConcreteFunction, keyword arguments named as the inputs

    @property
    def inputs(self) -> Mapping[str, meta_graph_pb2.TensorInfo]:
        return self.signature_def.inputs

    @property
    def outputs(self) -> Mapping[str, meta_graph_pb2.TensorInfo]:
        return self.signature_def.outputs

    def check_input_names(self, names: Iterable[str]) -> None:
        """INVALID_ARGUMENT, worded as predict_util.cc, unless ``names`` are the inputs."""
        sent = set(names)
        expected = set(self.inputs)
        if sent != expected:
            raise _invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )

    def check_output_filter(self, output_filter: Sequence[str]) -> list[str]:
        """The output aliases to return: all of them when the filter is empty."""
        if not output_filter:
            return sorted(self.outputs)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise _invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(sorted(self.outputs))}}}."
                )
            if alias in seen:
                raise _invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)


class Servable:
    """One loaded version of a model: ``tf.saved_model.load`` plus its signature_def map.

    ``run`` is thread-safe; concurrent requests share the loaded functions.
    """

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = Path(path)
        self.signature_defs = read_signature_defs(self.path)
        self._model = tf.saved_model.load(str(self.path), tags=["serve"])
        functions = dict(self._model.signatures)
        self.signatures = {
            key: Signature(key, signature_def, functions[key])
            for key, signature_def in self.signature_defs.items()
            if key in functions
        }

    def signature(self, name: str) -> Signature:
        """The named signature (empty = serving_default); FAILED_PRECONDITION if absent."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            # predict_util.cc answers an unknown signature key this way over gRPC.
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        return signature

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        max_batch_size: int = 0,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on numpy inputs; returns the (filtered) outputs as numpy.

        Inputs are checked against the SignatureDef (names, rank and fixed dims) and the
        batch (0th dim) against ``max_batch_size`` (0 = no limit) before anything runs.
        """
        signature.check_input_names(inputs)
        aliases = signature.check_output_filter(output_filter)
        feeds = {}
        for position, key in enumerate(sorted(signature.inputs)):
            info = signature.inputs[key]
            value = inputs[key]
            expected = shape_of(info.tensor_shape)
            if expected is not None and (
                len(expected) != value.ndim
                or any(e >= 0 and e != s for e, s in zip(expected, value.shape, strict=True))
            ):
                raise _invalid(
                    f"input {key} (arg[{position}]) has shape {format_shape(value.shape)} "
                    f"but signature {signature.name} expects {format_shape(expected)}"
                )
            if max_batch_size and value.ndim and value.shape[0] > max_batch_size:
                raise _invalid(
                    f"Task size {value.shape[0]} is larger than maximum input batch size "
                    f"{max_batch_size}"
                )
            feeds[key] = tf.constant(value, dtype=tf.dtypes.as_dtype(info.dtype))
        try:
            results = signature.function(**feeds)
        except tf.errors.OpError as error:
            code = _GRPC_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)
            raise RequestError(code, error.message.split("\n")[0]) from None
        except (TypeError, ValueError) as error:
            raise _invalid(" ".join(str(error).split())) from None
        return {alias: results[alias].numpy() for alias in aliases}

    def warm_up(self) -> int:
        """Runs the warm-up requests; returns how many calls were made.

        Replays ``assets.extra/tf_serving_warmup_requests`` (PredictionLog records, as TF
        Serving does) when the export has one; otherwise calls every signature once on a
        synthetic batch of one (empty strings, zeros). Any failure fails the load.
        """
        warmup_file = self.path / WARMUP_FILE
        calls = 0
        if warmup_file.is_file():
            for record in tf.data.TFRecordDataset(str(warmup_file)).as_numpy_iterator():
                entry = prediction_log_pb2.PredictionLog.FromString(record)
                if not entry.HasField("predict_log"):
                    raise ServingError(
                        f"{warmup_file}: only predict_log warm-up records are supported"
                    )
                request = entry.predict_log.request
                signature = self.signature(request.model_spec.signature_name)
                inputs = {k: tensor_proto_to_ndarray(v) for k, v in request.inputs.items()}
                self.run(signature, inputs, request.output_filter)
                calls += 1
            return calls
        for signature in self.signatures.values():
            if not signature.outputs:
                continue
            inputs = {}
            for key, info in signature.inputs.items():
                shape = shape_of(info.tensor_shape) or [1]
                shape = [1 if d < 0 else d for d in shape]
                if info.dtype == types_pb2.DT_STRING:
                    inputs[key] = np.full(shape, b"", dtype=object)
                elif info.dtype in _NUMPY_DTYPES:
                    inputs[key] = np.zeros(shape, dtype=_NUMPY_DTYPES[info.dtype])
                else:
                    break
            else:
                self.run(signature, inputs)
                calls += 1
        return calls


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The signature_def map of a SavedModel's "serve" MetaGraph, as TF Serving reads it."""
    pb = Path(path) / "saved_model.pb"
    pbtxt = Path(path) / "saved_model.pbtxt"
    saved_model = saved_model_pb2.SavedModel()
    if pb.is_file():
        saved_model.ParseFromString(pb.read_bytes())
    elif pbtxt.is_file():
        text_format.Parse(pbtxt.read_text(), saved_model)
    else:
        raise ServingError(
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
        )
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ServingError(f"SavedModel at {path} has no MetaGraph tagged 'serve'")


def uses_scann_ops(path: Path) -> bool:
    """Whether a SavedModel version folder contains ScaNN ops (stock TF Serving cannot load it)."""
    pb = Path(path) / "saved_model.pb"
    return pb.is_file() and b"Scann>" in pb.read_bytes()


_scann_registered = False


def register_scann_ops() -> None:
    """Registers ScaNN's TF ops once (``export.scann_ops``) before any SavedModel is loaded."""
    global _scann_registered
    if _scann_registered:
        return
    from export.scann_ops import register_scann_ops as register

    try:
        register()
    except ImportError as error:  # no scann wheel: portable exports still load
        log.warning("ScaNN ops not registered (%s); ScaNN exports will fail to load", error)
    _scann_registered = True


# --------------------------------------------------------------------------- models


@dataclass
class VersionState:
    """What GetModelStatus reports for one version."""

    state: int
    error_code: int = error_codes_pb2.OK
    error_message: str = ""


@dataclass
class ModelConfig:
    """One model of a ModelServerConfig (only what this server uses)."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    specific_versions: frozenset[int] = frozenset()
    version_labels: dict[str, int] = field(default_factory=dict)


def read_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Parses a ``--model_config_file`` (ModelServerConfig text proto)."""
    path = Path(path)
    if not path.is_file():
        raise ServingError(f"model config file {path} does not exist")
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as error:
        raise ServingError(
            f"model config file {path} is not a ModelServerConfig: {error}"
        ) from None
    if not config.HasField("model_config_list") or not config.model_config_list.config:
        raise ServingError(f"model config file {path} has no model_config_list entries")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ServingError(f"model config file {path}: every model needs name and base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ServingError(
                f"model {entry.name}: model_platform {entry.model_platform!r} is not supported "
                "(only tensorflow)"
            )
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        models.append(
            ModelConfig(
                name=entry.name,
                base_path=Path(entry.base_path),
                policy=policy,
                num_versions=max(1, entry.model_version_policy.latest.num_versions or 1),
                specific_versions=frozenset(entry.model_version_policy.specific.versions),
                version_labels=dict(entry.version_labels),
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ServingError(f"model config file {path} names a model twice")
    return models


def _fingerprint(path: Path) -> tuple:
    """Sizes and mtimes of every file under a version folder (to see when it settled)."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class Model:
    """The versions of one model: disk polling, background loads, atomic swaps, status.

    Request threads only read ``self._loaded`` (a dict replaced whole, never mutated), so
    the swap is one reference assignment and a request keeps the Servable it started on.
    """

    def __init__(self, config: ModelConfig, warm_up: bool = True):
        self.config = config
        self.name = config.name
        self.warm_up = warm_up
        self._loaded: dict[int, Servable] = {}
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._seen: dict[int, tuple] = {}  # version -> fingerprint seen at the last poll
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the failed attempt

    # ------------------------------------------------------------------ lookup
    def servable(self, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names; NOT_FOUND / INVALID_ARGUMENT as ServerCore."""
        loaded = self._loaded
        if label:
            if label not in self.config.version_labels:
                raise _invalid(f"Unrecognized servable version label: {label}")
            version = self.config.version_labels[label]
        if version is None:
            if not loaded:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})"
                )
            return loaded[max(loaded)]
        servable = loaded.get(version)
        if servable is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({self.name}, {version})",
            )
        return servable

    def states(self) -> dict[int, VersionState]:
        with self._lock:
            return dict(self._states)

    def resolve_label(self, label: str) -> int:
        if label not in self.config.version_labels:
            raise _invalid(f"Unrecognized servable version label: {label}")
        return self.config.version_labels[label]

    # ------------------------------------------------------------------ polling
    def versions_on_disk(self) -> dict[int, Path]:
        base = self.config.base_path
        if not base.is_dir():
            return {}
        versions = {}
        for child in base.iterdir():
            if child.is_dir() and child.name.isdigit():
                versions[int(child.name)] = child
        return versions

    def _aspired(self, on_disk: Mapping[int, Path]) -> list[int]:
        if self.config.policy == "all":
            return sorted(on_disk)
        if self.config.policy == "specific":
            return sorted(v for v in on_disk if v in self.config.specific_versions)
        return sorted(on_disk)[-self.config.num_versions :]

    def poll(self, initial: bool = False) -> None:
        """One pass: load aspired versions that settled, unload the ones no longer aspired.

        ``initial`` loads without waiting for a folder to settle (start-up).
        """
        on_disk = self.versions_on_disk()
        aspired = self._aspired(on_disk)
        for version in sorted(aspired, reverse=True):
            if version in self._loaded:
                continue
            fingerprint = _fingerprint(on_disk[version])
            if self._failed.get(version) == fingerprint:
                continue  # failed before and unchanged since: do not retry
            settled = initial or self._seen.get(version) == fingerprint
            self._seen[version] = fingerprint
            if not settled:
                continue
            self._load(version, on_disk[version], fingerprint)
        self._unload_unaspired(aspired)
        for version in list(self._seen):
            if version not in on_disk:
                self._seen.pop(version, None)
                self._failed.pop(version, None)

    def _set_state(self, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[version] = state

    def _load(self, version: int, path: Path, fingerprint: tuple) -> None:
        self._set_state(version, VersionState(LOADING))
        started = time.perf_counter()
        try:
            register_scann_ops()
            servable = Servable(self.name, version, path)
            calls = servable.warm_up() if self.warm_up else 0
        except Exception as error:  # any failure: report, keep serving what we have
            message = " ".join(
                (error.message if isinstance(error, RequestError) else str(error)).split()
            )
            code = error_codes_pb2.UNKNOWN
            if isinstance(error, tf.errors.OpError):
                code = error.error_code
            self._failed[version] = fingerprint
            self._set_state(version, VersionState(END, code, message))
            serving = max(self._loaded) if self._loaded else None
            log.error(
                "failed to load %s version %d from %s: %s; %s",
                self.name, version, path, message[:500],
                f"still serving version {serving}" if serving else "no version is being served",
            )
            return
        seconds = time.perf_counter() - started
        previous = max(self._loaded) if self._loaded else None
        with self._lock:
            self._loaded = {**self._loaded, version: servable}
            self._states[version] = VersionState(AVAILABLE)
        self._failed.pop(version, None)
        log.info(
            "loaded %s version %d from %s in %.2f s (%d warm-up calls)",
            self.name, version, path, seconds, calls,
        )
        if previous is not None and version > previous:
            log.info("swapped %s: serving version %d (was %d)", self.name, version, previous)

    def _unload_unaspired(self, aspired: Sequence[int]) -> None:
        loaded = self._loaded
        stale = [v for v in loaded if v not in aspired]
        if not stale:
            return
        # Availability preserving: drop an old version only once an aspired one serves,
        # or when no version is aspired any more (the folder was removed).
        if aspired and not any(v in loaded for v in aspired):
            return
        for version in stale:
            self._set_state(version, VersionState(UNLOADING))
            with self._lock:
                self._loaded = {v: s for v, s in self._loaded.items() if v != version}
                self._states[version] = VersionState(END)
            log.info("unloaded %s version %d", self.name, version)

    def unload_all(self) -> None:
        with self._lock:
            self._loaded = {}


# --------------------------------------------------------------------------- core


class ServerCore:
    """The models and the request logic shared by the gRPC and REST front ends."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        poll_seconds: float = 1.0,
        max_batch_size: int = 0,
        warm_up: bool = True,
    ):
        self.models = {config.name: Model(config, warm_up=warm_up) for config in models}
        self.poll_seconds = poll_seconds
        self.max_batch_size = max_batch_size
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def load_initial(self) -> None:
        """Loads every model's aspired versions; ServingError if a model has none."""
        for model in self.models.values():
            on_disk = model.versions_on_disk()
            if not on_disk:
                raise ServingError(
                    f"no version folders (numeric names) under {model.config.base_path} "
                    f"for model {model.name}"
                )
            model.poll(initial=True)
            if not model._loaded:
                failures = [s.error_message for s in model.states().values() if s.error_message]
                raise ServingError(
                    f"no version of model {model.name} under {model.config.base_path} could "
                    f"be loaded: {failures[-1] if failures else 'no aspired version'}"
                )

    def start_polling(self) -> None:
        if self.poll_seconds <= 0:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            for model in self.models.values():
                try:
                    model.poll()
                except Exception:  # a poll must never kill the poller
                    log.exception("polling %s failed", model.name)

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)

    def model(self, name: str, version: int | None = None) -> Model:
        model = self.models.get(name)
        if model is None:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}"
            )
        return model

    def servable_for(self, model_spec) -> Servable:
        """The Servable a ModelSpec names (name, and version or version_label)."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label or None
        return self.model(model_spec.name, version).servable(version, label)

    # ------------------------------------------------------------------ Predict
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self.servable_for(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name)
        signature.check_input_names(request.inputs)
        inputs = {}
        for position, key in enumerate(sorted(signature.inputs)):
            proto = request.inputs[key]
            expected = signature.inputs[key].dtype
            if proto.dtype != expected:
                raise _invalid(
                    f"Expects arg[{position}] to be {dtype_name(expected)} but "
                    f"{dtype_name(proto.dtype)} is provided (input {key} of signature "
                    f"{signature.name})"
                )
            inputs[key] = tensor_proto_to_ndarray(proto)
        outputs = servable.run(signature, inputs, request.output_filter, self.max_batch_size)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(
                ndarray_to_tensor_proto(value, signature.outputs[alias].dtype)
            )
        return response

    # ------------------------------------------------------------------ metadata
    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != SIGNATURE_DEF_FIELD:
                raise _invalid(f"Metadata field {name} is not supported")
        servable = self.servable_for(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    # ------------------------------------------------------------------ status
    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        spec = request.model_spec
        model = self.models.get(spec.name)
        states = model.states() if model is not None else {}
        version = spec.version.value if spec.HasField("version") else None
        if spec.version_label and model is not None:
            version = model.resolve_label(spec.version_label)
        response = get_model_status_pb2.GetModelStatusResponse()
        if version is not None:
            if version not in states:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {spec.name}",
                )
            selected = {version: states[version]}
        else:
            if not states:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
                )
            selected = states
        for number in sorted(selected):
            state = selected[number]
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = state.state
            entry.status.error_code = state.error_code
            entry.status.error_message = state.error_message
        return response


# --------------------------------------------------------------------------- gRPC


class _Handler:
    """Shared request wrapper: status mapping and the --verbose request log."""

    def __init__(self, core: ServerCore, verbose: bool):
        self.core = core
        self.verbose = verbose

    def call(self, context: grpc.ServicerContext, method: str, request, fn: Callable):
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return fn(request)
        except RequestError as error:
            code, message = error.code, error.message
        except Exception as error:  # a bug must answer INTERNAL, not kill the worker
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
        finally:
            if self.verbose:
                spec = getattr(request, "model_spec", None)
                log.info(
                    "grpc %s model=%s signature=%s -> %s %.2f ms%s",
                    method, spec.name if spec else "-",
                    (spec.signature_name or "-") if spec else "-",
                    code.name, (time.perf_counter() - started) * 1000,
                    f" ({message})" if message else "",
                )
        context.abort(code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` on a ServerCore."""

    def __init__(self, handler: _Handler):
        self._handler = handler

    def Predict(self, request, context):  # noqa: N802 (gRPC method names)
        return self._handler.call(context, "Predict", request, self._handler.core.predict)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._handler.call(
            context, "GetModelMetadata", request, self._handler.core.metadata
        )

    def _unimplemented(self, method: str, request, context):
        def refuse(_request):
            raise RequestError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not implemented by tfrs-cosine serve: the exports have no "
                "classification or regression signatures; use Predict",
            )

        return self._handler.call(context, method, request, refuse)

    def Classify(self, request, context):  # noqa: N802
        return self._unimplemented("Classify", request, context)

    def Regress(self, request, context):  # noqa: N802
        return self._unimplemented("Regress", request, context)

    def MultiInference(self, request, context):  # noqa: N802
        return self._unimplemented("MultiInference", request, context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService`` on a ServerCore."""

    def __init__(self, handler: _Handler):
        self._handler = handler

    def GetModelStatus(self, request, context):  # noqa: N802
        return self._handler.call(context, "GetModelStatus", request, self._handler.core.status)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        def refuse(_request):
            raise RequestError(
                grpc.StatusCode.UNIMPLEMENTED,
                "HandleReloadConfigRequest is not implemented by tfrs-cosine serve; restart "
                "it with the new --model_config_file",
            )

        return self._handler.call(context, "HandleReloadConfigRequest", request, refuse)


# --------------------------------------------------------------------------- REST

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_BYTES_SUFFIX = "_bytes"


def _json_text(value: Any) -> str:
    """A JSON value as TF Serving prints it in error messages (compact)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _json_leaf(value: Any, dtype: int) -> Any:
    """One JSON scalar converted for ``dtype``; type errors worded as json_tensor.cc."""

    def type_error() -> RequestError:
        return _invalid(
            f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected "
            f"type: {dtype_name(dtype)}"
        )

    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not _is_b64(value):
                raise _invalid(
                    f"JSON Value: {_json_text(value)} not formatted correctly for base64 data"
                )
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise _invalid("Unable to base64 decode") from None
        raise type_error()
    if dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
        raise type_error()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error()
    if dtype in _INTEGER_DTYPES:
        if not isinstance(value, int):
            raise type_error()
        info = np.iinfo(_NUMPY_DTYPES[dtype])
        if not info.min <= value <= info.max:
            raise type_error()
        return value
    if dtype == types_pb2.DT_FLOAT and math.isfinite(value) and abs(value) > 3.4028234663852886e38:
        raise _invalid(
            f"Cannot convert JSON value: {_json_text(value)} to float without loss of precision."
        )
    return value


def json_to_ndarray(value: Any, dtype: int) -> np.ndarray:
    """A (nested-list) JSON value as a dense numpy array of ``dtype`` (json_tensor.cc rules).

    The shape comes from the first element at every level; every list must match it.
    """
    if dtype not in _NUMPY_DTYPES:
        raise RequestError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {_json_text(value)} to type: {dtype_name(dtype)}",
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
                raise _invalid(
                    f"JSON Value: {_json_text(item)} found at incorrect level: {level + 1} in "
                    f"the JSON DOM. Expected at level: {rank}"
                )
            flat.append(_json_leaf(item, dtype))
            return
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise _invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {shape[level]}"
            )
        for element in item:
            fill(element, level + 1)

    fill(value, 0)
    np_dtype = _NUMPY_DTYPES[dtype]
    if np_dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = np.asarray(flat, dtype=np_dtype)
    return array.reshape(shape)


def json_request_to_inputs(
    body: dict, signature_inputs: Mapping[str, meta_graph_pb2.TensorInfo]
) -> tuple[dict[str, np.ndarray], str]:
    """The inputs of a REST predict body and its format ("row" or "columnar")."""
    instances = body.get("instances")
    columnar = body.get("inputs")
    names = sorted(signature_inputs)
    if "instances" in body and "inputs" in body:
        raise _invalid(
            f"JSON Value: {_json_text(body)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if "instances" in body:
        if not isinstance(instances, list):
            raise _invalid(
                f"JSON Value: {_json_text(body)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise _invalid(f"JSON Value: {_json_text(body)} No values in 'instances' array")
        named = isinstance(instances[0], dict) and not _is_b64(instances[0])
        if not named and len(names) > 1:
            raise _invalid(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for index, element in enumerate(instances):
            element_named = isinstance(element, dict) and not _is_b64(element)
            if named and not element_named:
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            if not named and element_named:
                raise _invalid(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            items = element if named else {names[0]: element}
            for key, item in items.items():
                if key not in signature_inputs:
                    raise _invalid(
                        f"Failed to process element: {index} key: {key} of 'instances' list. "
                        f"Error: JSON object: does not have named input: {key}"
                    )
                try:
                    array = json_to_ndarray(item, signature_inputs[key].dtype)
                except RequestError as error:
                    where = f"{index} key: {key}" if named else f"{index}"
                    raise _invalid(
                        f"Failed to process element: {where} of 'instances' list. "
                        f"Error: {error.message}"
                    ) from None
                if rows[key] and rows[key][0].shape != array.shape:
                    raise _invalid(
                        f"Expecting shape {format_shape(rows[key][0].shape)} but got: "
                        f"{format_shape(array.shape)}"
                    )
                rows[key].append(array)
            if set(items) != set(names):
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_json_text(element)} must only have keys: {','.join(names)}"
                )
        return {key: np.stack(arrays) for key, arrays in rows.items()}, "row"
    if "inputs" in body:
        if not isinstance(columnar, dict) or _is_b64(columnar):
            if len(names) > 1:
                raise _invalid(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            return {names[0]: json_to_ndarray(columnar, signature_inputs[names[0]].dtype)}, (
                "columnar"
            )
        inputs = {}
        for key in names:
            if key not in columnar:
                raise _invalid(f"Missing named input: {key} in 'inputs' object.")
            inputs[key] = json_to_ndarray(columnar[key], signature_inputs[key].dtype)
        return inputs, "columnar"
    raise _invalid("Missing 'inputs' or 'instances' key")


def _format_floats(values: np.ndarray) -> list[str]:
    """Float leaves as TF Serving writes them: shortest of %g / %.9g (%.17g) that round-trips."""
    flat = values.reshape(-1)
    wide = flat.astype(np.float64)
    finite = np.isfinite(wide)
    text = np.char.mod("%g", np.where(finite, wide, 0.0)).astype(object)
    with np.errstate(invalid="ignore", over="ignore"):
        back = text.astype(np.float64).astype(flat.dtype)
    redo = finite & (back != flat)
    if redo.any():
        digits = "%.9g" if flat.dtype == np.float32 else "%.17g"
        text[redo] = np.char.mod(digits, wide[redo]).astype(object)
    out = text.tolist()
    for index in np.flatnonzero(~finite).tolist():
        value = float(wide[index])
        out[index] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    for index, item in enumerate(out):
        if finite[index] and "." not in item and "e" not in item:
            out[index] = item + ".0"
    return out


def _json_leaves(array: np.ndarray, as_bytes: bool) -> list[str]:
    if array.dtype == object:
        if as_bytes:
            return [
                '{"b64": "' + base64.b64encode(v).decode("ascii") + '"}'
                for v in array.reshape(-1).tolist()
            ]
        return [
            json.dumps(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            for v in array.reshape(-1).tolist()
        ]
    if array.dtype == np.bool_:
        return ["true" if v else "false" for v in array.reshape(-1).tolist()]
    if np.issubdtype(array.dtype, np.floating):
        return _format_floats(array)
    return [str(v) for v in array.reshape(-1).tolist()]


def _nest(leaves: list[str], shape: Sequence[int], stop: int = 0) -> list[str]:
    """Joins flat JSON leaves into nested arrays down to level ``stop`` (0 = one value)."""
    groups = leaves
    for level in range(len(shape) - 1, stop - 1, -1):
        size = shape[level]
        outer = math.prod(shape[:level])
        if size == 0:
            groups = ["[]"] * outer
        else:
            groups = [
                "[" + ", ".join(groups[i * size : (i + 1) * size]) + "]" for i in range(outer)
            ]
    return groups


def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """A REST predict answer: ``{"predictions": [...]}`` (row) or ``{"outputs": ...}``."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    leaves = {n: _json_leaves(outputs[n], n.endswith(_BYTES_SUFFIX)) for n in names}
    if fmt == "columnar":
        values = {n: _nest(leaves[n], outputs[n].shape)[0] for n in names}
        if len(names) == 1:
            return '{\n    "outputs": ' + values[names[0]] + "\n}"
        body = ",\n        ".join(f"{json.dumps(n)}: {values[n]}" for n in names)
        return '{\n    "outputs": {\n        ' + body + "\n    }\n}"
    batch = None
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise _invalid(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch is not None and batch != shape[0]:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}"
            )
        batch = shape[0]
    rows = {n: _nest(leaves[n], outputs[n].shape, stop=1) for n in names}
    if len(names) == 1:
        items = rows[names[0]]
    else:
        items = [
            "{" + ", ".join(f"{json.dumps(n)}: {rows[n][i]}" for n in names) + "}"
            for i in range(batch)
        ]
    return '{\n    "predictions": [' + ", ".join(items) + "]\n}"


class RestApp:
    """TF Serving's REST API as a WSGI application."""

    def __init__(self, core: ServerCore, verbose: bool, max_request_bytes: int):
        self.core = core
        self.verbose = verbose
        self.max_request_bytes = max_request_bytes

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        status, body = self.handle(method, path, environ)
        data = body.encode("utf-8")
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        if self.verbose:
            log.info(
                "http %s %s -> %s %.2f ms", method, path, status.split()[0],
                (time.perf_counter() - started) * 1000,
            )
        return [data]

    def handle(self, method: str, path: str, environ) -> tuple[str, str]:
        try:
            return "200 OK", self._dispatch(method, path, environ)
        except RequestError as error:
            return _HTTP_STATUS[error.code], json.dumps({"error": error.message})
        except Exception as error:
            log.exception("REST %s %s failed", method, path)
            return "500 Internal Server Error", json.dumps(
                {"error": f"{type(error).__name__}: {error}"}
            )

    def _read_body(self, environ) -> bytes:
        declared = environ.get("CONTENT_LENGTH")
        try:
            length = int(declared) if declared else None
        except ValueError:
            raise _invalid("Content-Length is not a number") from None
        if length is None:  # chunked: waitress has buffered it (up to its own limit)
            body = environ["wsgi.input"].read()
            length = len(body)
        if length > self.max_request_bytes:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body of {length} bytes exceeds the limit of "
                f"{self.max_request_bytes} bytes (--max_request_bytes)",
            )
        if declared:
            body = environ["wsgi.input"].read(length) if length else b""
        return body

    def _dispatch(self, method: str, path: str, environ) -> str:
        if not re.fullmatch(r"/v1/.*", path, re.IGNORECASE):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
        malformed = _invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            spec = self._model_spec(name, version, label)
            body = self._read_body(environ)
            if verb.lower() != "predict":
                raise RequestError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{verb} is not implemented by tfrs-cosine serve: the exports have no "
                    "classification or regression signatures; use :predict",
                )
            return self._predict(spec, body)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise _invalid("Missing model name in request.")
            spec = self._model_spec(name, version, label)
            if subresource:
                return self._metadata(spec)
            request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
            return json_format.MessageToJson(
                self.core.status(request), always_print_fields_with_no_presence=True
            )
        raise malformed

    @staticmethod
    def _model_spec(name: str, version: str | None, label: str | None):
        spec = predict_pb2.PredictRequest().model_spec
        spec.name = urllib.parse.unquote(name)
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = urllib.parse.unquote(label)
        return spec

    def _metadata(self, spec) -> str:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD]
        )
        response = self.core.metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        model_spec = json_format.MessageToJson(response.model_spec, **options)
        signature_defs = json_format.MessageToJson(signature_map, **options)
        return (
            '{\n"model_spec":' + model_spec + ',\n"metadata": {"signature_def": '
            + signature_defs + "}\n}\n"
        )

    def _predict(self, spec, body: bytes) -> str:
        if not body.strip():
            raise _invalid("JSON Parse error: The document is empty")
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _invalid(f"JSON Parse error: {error}") from None
        if not isinstance(document, dict):
            raise _invalid(f"JSON Value: {_json_text(document)} Is not object")
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise _invalid(
                f"JSON Value: {_json_text(document)} not formatted correctly. 'signature_name' "
                "key must be a string value."
            )
        servable = self.core.servable_for(spec)
        key = signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(key)
        if signature is None:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        if not signature.inputs:
            raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        inputs, fmt = json_request_to_inputs(document, signature.inputs)
        outputs = servable.run(signature, inputs, (), self.core.max_batch_size)
        return outputs_to_json(outputs, fmt)


# --------------------------------------------------------------------------- server


@dataclass
class ServerOptions:
    """The ``tfrs-cosine serve`` flags (named as tensorflow_model_server's)."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    model_name: str | None = None
    model_base_path: str | None = None
    model_config_file: str | None = None
    file_system_poll_wait_seconds: float = 1.0
    max_batch_size: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    grpc_max_threads: int = 16
    rest_api_num_threads: int = 16
    verbose: bool = False
    warm_up: bool = True


def model_configs(options: ServerOptions) -> list[ModelConfig]:
    """The models to serve, from --model_config_file or --model_name/--model_base_path."""
    if options.model_config_file:
        if options.model_base_path:
            raise ServingError("give --model_config_file or --model_base_path, not both")
        return read_model_config_file(options.model_config_file)
    if not options.model_base_path:
        raise ServingError("--model_base_path (or --model_config_file) is required")
    base = Path(options.model_base_path).expanduser().resolve()
    if not base.is_dir():
        raise ServingError(f"--model_base_path {options.model_base_path} is not a directory")
    return [ModelConfig(name=options.model_name or "default", base_path=base)]


class ModelServer:
    """The gRPC and REST front ends on one ServerCore, with clean start and stop."""

    def __init__(self, options: ServerOptions):
        for flag in ("port", "rest_api_port"):
            value = getattr(options, flag)
            if not 0 <= value <= 65535:
                raise ServingError(f"--{flag} {value} is not a port number (0-65535)")
        if options.port == 0:
            raise ServingError("--port 0: the gRPC port is required")
        if options.port == options.rest_api_port:
            raise ServingError(f"--port and --rest_api_port are both {options.port}")
        if options.max_batch_size < 0:
            raise ServingError("--max_batch_size must be >= 0 (0 = no limit)")
        if options.max_request_bytes <= 0:
            raise ServingError("--max_request_bytes must be positive")
        self.options = options
        self.core = ServerCore(
            model_configs(options),
            poll_seconds=options.file_system_poll_wait_seconds,
            max_batch_size=options.max_batch_size,
            warm_up=options.warm_up,
        )
        self._grpc: grpc.Server | None = None
        self._http = None
        self._http_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Loads the models, then opens the ports (as TF Serving, which waits for the models)."""
        options = self.options
        self.core.load_initial()
        handler = _Handler(self.core, options.verbose)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=options.grpc_max_threads, thread_name_prefix="grpc"
            ),
            options=[
                ("grpc.max_receive_message_length", options.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(handler), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(handler), self._grpc
        )
        address = f"{options.host}:{options.port}"
        try:
            bound = self._grpc.add_insecure_port(address)
        except RuntimeError as error:
            raise ServingError(f"cannot bind the gRPC port {address}: {error}") from None
        if not bound:
            raise ServingError(f"cannot bind the gRPC port {address}")
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s ...", address)
        if options.rest_api_port:
            import waitress

            app = RestApp(self.core, options.verbose, options.max_request_bytes)
            try:
                self._http = waitress.create_server(
                    app,
                    host=options.host,
                    port=options.rest_api_port,
                    threads=options.rest_api_num_threads,
                    # Above our own cap, so RestApp answers oversized bodies with a JSON
                    # error; waitress still refuses anything larger than this outright.
                    max_request_body_size=2 * options.max_request_bytes,
                    ident="tfrs-cosine",
                    clear_untrusted_proxy_headers=True,
                )
            except OSError as error:
                self._grpc.stop(0)
                raise ServingError(
                    f"cannot bind the REST port {options.host}:{options.rest_api_port}: {error}"
                ) from None
            self._http_thread = threading.Thread(target=self._http.run, name="rest", daemon=True)
            self._http_thread.start()
            log.info(
                "Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_api_port
            )
        self.core.start_polling()

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting, lets running requests finish (up to ``grace`` s), unloads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: finishing in-flight requests (up to %.0f s)", grace)
        self.core.stop()
        stopped = self._grpc.stop(grace) if self._grpc is not None else None
        if self._http is not None:
            self._http.close()  # the listening socket: no new connections
            self._http.task_dispatcher.shutdown(cancel_pending=False, timeout=grace)
            for channel in list(self._http._map.values()):
                channel.close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=grace)
        if stopped is not None:
            stopped.wait(grace)
        for model in self.core.models.values():
            model.unload_all()
        log.info("server stopped")

    def serve_forever(self) -> None:
        """start(), then block until SIGTERM or SIGINT, then stop(). Main thread only."""
        received = threading.Event()

        def on_signal(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            received.set()

        previous = {
            sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not received.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def configure_logging(verbose: bool = False) -> None:
    """One timestamped line per event on stderr (load, swap, failure, requests)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname).1s serve] %(message)s", "%H:%M:%S")
    )
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("waitress").setLevel(logging.ERROR)


def serve(options: ServerOptions) -> int:
    """Runs the server until SIGTERM/SIGINT; 0 on a clean stop."""
    configure_logging(options.verbose)
    server = ModelServer(options)
    server.serve_forever()
    return 0
