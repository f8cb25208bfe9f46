"""One loaded version of a model: its SignatureDefs and the concrete functions that run them.

``load_servable(name, version, path)`` reads the ``signature_def`` map of the "serve"
MetaGraph (as TF Serving does), loads the SavedModel with ``tf.saved_model.load`` (after
registering the ScaNN ops, ``export.scann_ops``), and warms it up before it is served:
``assets.extra/tf_serving_warmup_requests`` when present (PredictionLog records, as TF
Serving replays them), else one synthetic call per signature.

The request path is lean: ``Signature.check`` validates numpy inputs once against the
SignatureDef (names, rank, fixed dimensions); ``Signature.call`` turns each into one
tensor and runs the concrete function once through ``FlatCall`` (TensorFlow's op
execution, without the public call's argument checks and flattening, on the
single-threaded executor); outputs come back as numpy. TensorFlow
errors raised inside the graph keep their status (an ``InvalidArgumentError`` answers
INVALID_ARGUMENT / HTTP 400).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import ServingError
from serving.status import CODE_BY_NUMBER, RequestError, invalid
from serving.tensors import (
    DT_STRING,
    NUMPY_DTYPES,
    dtype_name,
    format_shape,
    shape_of,
    to_ndarray,
)

log = logging.getLogger("tfrs_cosine.serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


@dataclass(frozen=True)
class Signature:
    """One signature: its SignatureDef and the concrete function that runs it."""

    name: str
    signature_def: meta_graph_pb2.SignatureDef
    function: Any  # the loaded ConcreteFunction
    flat_call: FlatCall | None  # the lean way to call it (None: the public call)
    input_names: tuple[str, ...]  # sorted: the order of the flat arguments
    input_dtypes: dict[str, int]
    input_shapes: dict[str, list[int] | None]
    output_dtypes: dict[str, int]

    @classmethod
    def create(cls, name: str, signature_def, function) -> Signature:
        inputs = signature_def.inputs
        return cls(
            name=name,
            signature_def=signature_def,
            function=function,
            flat_call=FlatCall.create(function),
            input_names=tuple(sorted(inputs)),
            input_dtypes={k: v.dtype for k, v in inputs.items()},
            input_shapes={k: shape_of(v.tensor_shape) for k, v in inputs.items()},
            output_dtypes={k: v.dtype for k, v in signature_def.outputs.items()},
        )

    @property
    def method_name(self) -> str:
        return self.signature_def.method_name

    def check_input_names(self, names: Iterable[str]) -> None:
        """INVALID_ARGUMENT, worded as predict_util.cc, unless ``names`` are the inputs."""
        sent = set(names)
        expected = set(self.input_names)
        if sent != expected:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )

    def check_dtype(self, key: str, dtype: int) -> None:
        expected = self.input_dtypes[key]
        if dtype != expected:
            position = self.input_names.index(key)
            raise invalid(
                f"Expects arg[{position}] to be {dtype_name(expected)} but "
                f"{dtype_name(dtype)} is provided (input {key} of signature {self.name})"
            )

    def check_shapes(self, inputs: Mapping[str, np.ndarray], max_batch_size: int = 0) -> None:
        """Rank and fixed dimensions against the SignatureDef; the batch against the cap."""
        for position, key in enumerate(self.input_names):
            value = inputs[key]
            expected = self.input_shapes[key]
            if expected is not None and (
                len(expected) != value.ndim
                or any(e >= 0 and e != s for e, s in zip(expected, value.shape, strict=True))
            ):
                raise invalid(
                    f"input {key} (arg[{position}]) has shape {format_shape(value.shape)} "
                    f"but signature {self.name} expects {format_shape(expected)}"
                )
            if max_batch_size and value.ndim and value.shape[0] > max_batch_size:
                raise invalid(
                    f"Task size {value.shape[0]} is larger than maximum input batch size "
                    f"{max_batch_size}"
                )

    def check_output_filter(self, output_filter: Sequence[str]) -> list[str] | None:
        """The output aliases to return; None for all of them."""
        if not output_filter:
            return None
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in self.output_dtypes:
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(sorted(self.output_dtypes))}}}."
                )
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)

    def call(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the concrete function on checked numpy inputs; numpy outputs."""
        try:
            tensors = [
                tf.constant(inputs[key], dtype=self.input_dtypes[key]) for key in self.input_names
            ]
            if self.flat_call is not None:
                results = self.flat_call(tensors)
            else:
                results = self.function(**dict(zip(self.input_names, tensors, strict=True)))
        except tf.errors.OpError as error:
            code = CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)
            raise RequestError(code, graph_error_text(error.message)) from None
        except (TypeError, ValueError) as error:
            raise invalid(" ".join(str(error).split())) from None
        return {alias: value.numpy() for alias, value in results.items()}


class FlatCall:
    """A loaded concrete function called straight through TensorFlow's op execution.

    ``ConcreteFunction.__call__``, and even its ``_call_flat``, spend more Python per call
    than TensorFlow spends running this project's signatures at batch 1 (tape and graph
    checks, context managers, a config proto built anew, output packing). This does what
    they end in, ``execute.execute(function name, inputs + captured inputs, attributes)``,
    with the captured inputs, the attributes and the flat-output-to-alias map computed
    once. BENCHMARKS.md (serving) measures both calls in one process.

    It runs the function with TensorFlow's single-threaded executor (every kernel in the
    calling thread, no hand-off to the inter-op pool; kernels keep their intra-op
    threads). A function that executor refuses (low-level control flow: its errors say
    "single-threaded executor") switches to the default executor for good, and the call
    is retried.

    ``create`` returns None when the function is not a plain eager concrete function with
    a flat dict of outputs (TensorFlow internals moved); callers then use the public call.
    Cost: one dict of outputs per call; no copies of the input or output tensors.
    """

    SINGLE_THREADED = "SINGLE_THREADED_EXECUTOR"

    def __init__(self, name: str, num_outputs: int, captured: list, aliases: dict[str, int]):
        from tensorflow.python.eager import context, execute

        self._execute = execute.execute
        self._context = context.context()
        self._name = name
        self._num_outputs = num_outputs
        self._captured = captured
        self._aliases = tuple(aliases.items())
        self._config = self._context.function_call_options.config_proto_serialized
        self.executor = self.SINGLE_THREADED
        self._attrs = self._attributes()

    def _attributes(self) -> tuple:
        return ("executor_type", self.executor, "config_proto", self._config)

    @classmethod
    def create(cls, function: Any) -> FlatCall | None:
        atomic = getattr(function, "_inference_function", None)
        raw_captures = getattr(function, "_captured_inputs", None)
        if atomic is None or raw_captures is None or any(callable(c) for c in raw_captures):
            return None
        try:
            num_outputs = len(atomic.function_type.flat_outputs)
            aliases = atomic.function_type.pack_output(list(range(num_outputs)))
            captured = list(function.captured_inputs)
            name = atomic.name.decode() if isinstance(atomic.name, bytes) else str(atomic.name)
        except Exception:  # a TensorFlow without these internals: the public call
            return None
        if not isinstance(aliases, dict) or sorted(aliases.values()) != list(range(num_outputs)):
            return None
        if any(getattr(c, "dtype", None) is None for c in captured):
            return None
        return cls(name, num_outputs, captured, aliases)

    def __call__(self, tensors: list) -> dict[str, Any]:
        """Runs the function on its flat inputs (``Signature.input_names`` order)."""
        inputs = tensors + self._captured
        try:
            flat = self._execute(self._name, self._num_outputs, inputs, self._attrs, self._context)
        except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError) as error:
            refused = "single-threaded executor" in error.message.lower()
            if self.executor != self.SINGLE_THREADED or not refused:
                raise
            log.info(
                "%s: the single-threaded executor refused it (%s); using the default executor",
                self._name, graph_error_text(error.message),
            )
            self.executor = ""
            self._attrs = self._attributes()
            flat = self._execute(self._name, self._num_outputs, inputs, self._attrs, self._context)
        return {alias: flat[index] for alias, index in self._aliases}


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node", "File ")


def graph_error_text(message: str) -> str:
    """The line of a TensorFlow runtime error that names the problem.

    ``Graph execution error: ... Detected at node ... assertion failed: [msg] ...
    [[{{node ...}}]] [Op:...]`` -> ``assertion failed: [msg] ...``.
    """
    lines = [line.strip() for line in message.split("\n")]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    text = useful[-1] if useful else (lines[0] if lines else message)
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text)


class Servable:
    """One loaded version: ``signatures`` by key, and the raw ``signature_defs``."""

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = Path(path)
        self.signature_defs = read_signature_defs(self.path)
        self._model = tf.saved_model.load(str(self.path), tags=["serve"])
        functions = dict(self._model.signatures)
        self.signatures = {
            key: Signature.create(key, signature_def, functions[key])
            for key, signature_def in self.signature_defs.items()
            if key in functions
        }

    def signature(self, name: str) -> Signature:
        """The named signature (empty = serving_default); FAILED_PRECONDITION if absent."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:  # predict_util.cc's answer over gRPC
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        return signature

    def warm_up(self) -> int:
        """Runs the warm-up requests; returns how many calls were made. Failures raise."""
        warmup_file = self.path / WARMUP_FILE
        calls = 0
        if warmup_file.is_file():
            from tensorflow_serving.apis import prediction_log_pb2

            for record in tf.data.TFRecordDataset(str(warmup_file)).as_numpy_iterator():
                entry = prediction_log_pb2.PredictionLog.FromString(record)
                if not entry.HasField("predict_log"):
                    raise ServingError(f"{warmup_file}: only predict_log warm-up records are supported")
                request = entry.predict_log.request
                signature = self.signature(request.model_spec.signature_name)
                signature.check_input_names(request.inputs)
                inputs = {k: to_ndarray(v) for k, v in request.inputs.items()}
                signature.check_shapes(inputs)
                signature.call(inputs)
                calls += 1
            return calls
        for signature in self.signatures.values():
            if not signature.output_dtypes:
                continue
            inputs = {}
            for key, dtype in signature.input_dtypes.items():
                shape = [1 if d < 0 else d for d in (signature.input_shapes[key] or [1])]
                if dtype == DT_STRING:
                    inputs[key] = np.full(shape, b"", dtype=object)
                elif dtype in NUMPY_DTYPES:
                    inputs[key] = np.zeros(shape, dtype=NUMPY_DTYPES[dtype])
                else:
                    break
            else:
                signature.call(inputs)
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


_scann_registered = False


def register_scann_ops() -> None:
    """Registers ScaNN's TF ops once (``export.scann_ops``) before any SavedModel loads."""
    global _scann_registered
    if _scann_registered:
        return
    from export.scann_ops import register_scann_ops as register

    try:
        register()
    except ImportError as error:  # no scann wheel: portable exports still load
        log.warning("ScaNN ops not registered (%s); ScaNN exports will fail to load", error)
    _scann_registered = True


def load_servable(name: str, version: int, path: Path, warm_up: bool = True) -> Servable:
    """Loads and warms up one version (the version manager's loader)."""
    register_scann_ops()
    servable = Servable(name, version, path)
    calls = servable.warm_up() if warm_up else 0
    log.info("warmed up %s version %d with %d calls", name, version, calls)
    return servable
