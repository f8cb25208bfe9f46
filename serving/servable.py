"""One loaded version of a model: its SignatureDefs and the concrete functions that run them.

``load_servable(name, version, path)`` reads the ``signature_def`` map of the "serve"
MetaGraph (as TF Serving does), loads the SavedModel with ``tf.saved_model.load`` (after
registering the ScaNN ops, ``export.scann_ops``), and warms it up before it is served:
``assets.extra/tf_serving_warmup_requests`` when present (PredictionLog records, as TF
Serving replays them), else one synthetic call per signature.

The request path is lean: ``Signature.check`` validates numpy inputs once against the
SignatureDef (names, rank, fixed dimensions); ``Signature.call`` turns each into one
tensor and calls the concrete function's flat entry point once, so TensorFlow does not
check and flatten the arguments a second time; outputs come back as numpy. TensorFlow
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
            flat = getattr(self.function, "_call_flat", None)
            if flat is not None:  # TensorFlow's own entry after its argument checks
                results = flat(tensors, self.function.captured_inputs)
            else:
                results = self.function(**dict(zip(self.input_names, tensors, strict=True)))
        except tf.errors.OpError as error:
            code = CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)
            raise RequestError(code, graph_error_text(error.message)) from None
        except (TypeError, ValueError) as error:
            raise invalid(" ".join(str(error).split())) from None
        return {alias: value.numpy() for alias, value in results.items()}


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
