"""The server core: the models, and the request logic the gRPC and REST front ends share.

``ServerCore`` owns one ``VersionManager`` per configured model, the poller thread, the
optional ``BatchScheduler`` and the listeners of version state changes (metrics, the
health service). Its methods take and return TF Serving's messages
(``tensorflow_serving.apis``) and raise ``RequestError`` for anything but a result.

Predict: find the servable (NOT_FOUND), the signature (FAILED_PRECONDITION), check the
input names and dtypes on the protos, decode each TensorProto straight to numpy, check
the shapes once, then either call the signature's concrete function once or hand the
inputs to the batch scheduler, and write the outputs into the response's typed fields.

Classify, Regress and MultiInference answer what TF Serving answers for signatures that
are not classification or regression signatures (``classifier.cc``, ``regressor.cc``,
``multi_inference.cc``, with ``--enable_signature_method_name_check`` off, its default):
INVALID_ARGUMENT naming the structural mismatch. The exports of this project never have
such signatures, so these methods never run a model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from serving.batching import BatchingParameters, BatchScheduler
from serving.errors import ServingError
from serving.servable import DEFAULT_SIGNATURE, Servable, Signature, load_servable
from serving.status import RequestError, invalid, not_found
from serving.tensors import fill_tensor_proto, to_ndarray
from serving.versions import Loader, ModelConfig, VersionManager, VersionState

log = logging.getLogger("tfrs_cosine.serving")

SIGNATURE_DEF_FIELD = "signature_def"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
StateListener = Callable[[str, int, VersionState], None]


class ServerCore:
    """Models, version polling, batching and the request logic of both front ends.

    Args:
      models: the configured models.
      poll_seconds: seconds between polls of the base paths (0: no polling thread).
      max_batch_size: refuse requests whose batch is larger (0: no limit).
      batching: dynamic batching parameters (None: every request runs alone).
      loader: ``(name, version, path) -> servable``; default loads SavedModels.
      warm_up: whether the default loader warms each version up.
      batch_observer: told every batch (metrics).
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        poll_seconds: float = 1.0,
        max_batch_size: int = 0,
        batching: BatchingParameters | None = None,
        loader: Loader | None = None,
        warm_up: bool = True,
        batch_observer=None,
    ):
        if loader is None:
            def loader(name: str, version: int, path: Path) -> Servable:
                return load_servable(name, version, path, warm_up=warm_up)
        self._listeners: list[StateListener] = []
        self.models = {
            config.name: VersionManager(config, loader, on_change=self._state_changed)
            for config in models
        }
        self.poll_seconds = poll_seconds
        self.max_batch_size = max_batch_size
        self.batcher = BatchScheduler(batching, batch_observer) if batching is not None else None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.polls = 0  # completed polls of the poller thread (a metric)

    # ------------------------------------------------------------------ lifecycle
    def add_listener(self, listener: StateListener) -> None:
        """``listener(model, version, state)`` on every version state change."""
        self._listeners.append(listener)

    def _state_changed(self, model: str, version: int, state: VersionState) -> None:
        for listener in self._listeners:
            try:
                listener(model, version, state)
            except Exception:  # a listener must never break a load
                log.exception("state listener failed")

    def all_available(self) -> bool:
        """Whether every configured model has a version serving (the health check)."""
        return all(model.available for model in self.models.values())

    def load_initial(self) -> None:
        """Loads every model's aspired versions; ServingError if a model has none."""
        for model in self.models.values():
            if not model.versions_on_disk():
                raise ServingError(
                    f"no version folders (numeric names) under {model.config.base_path} "
                    f"for model {model.name}"
                )
            model.poll(initial=True)
            if not model.available:
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

    def poll_once(self) -> None:
        """One poll of every model (the poller's step)."""
        for model in self.models.values():
            try:
                model.poll()
            except Exception:  # a poll must never kill the poller
                log.exception("polling %s failed", model.name)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll_once()
            self.polls += 1

    def stop(self) -> None:
        """Stops polling and drains the batch queues."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        if self.batcher is not None:
            self.batcher.stop()

    # ------------------------------------------------------------------ lookup
    def model(self, name: str, version: int | None = None) -> VersionManager:
        model = self.models.get(name)
        if model is None:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {what}")
        return model

    def servable_for(self, model_spec) -> Any:
        """The servable a ModelSpec names (name, and version or version_label)."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label or None
        return self.model(model_spec.name, version).servable(version, label)

    # ------------------------------------------------------------------ Predict
    def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Checks shapes once, runs the signature (batched or alone), filters outputs."""
        aliases = signature.check_output_filter(output_filter)
        signature.check_shapes(inputs, self.max_batch_size)
        if self.batcher is not None:
            key = (servable.name, servable.version, signature.name)
            outputs = self.batcher.submit(key, inputs, signature.call)
        else:
            outputs = signature.call(inputs)
        if aliases is not None:
            outputs = {alias: outputs[alias] for alias in aliases}
        return outputs

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self.servable_for(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name)
        signature.check_input_names(request.inputs)
        inputs = {}
        for key in signature.input_names:
            proto = request.inputs[key]
            signature.check_dtype(key, proto.dtype)
            inputs[key] = to_ndarray(proto)
        outputs = self.run(servable, signature, inputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        spec = response.model_spec
        spec.name = servable.name
        spec.version.value = servable.version
        spec.signature_name = signature.name
        for alias, value in outputs.items():
            fill_tensor_proto(response.outputs[alias], value, signature.output_dtypes[alias])
        return response

    # ------------------------------------------------------------------ metadata, status
    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != SIGNATURE_DEF_FIELD:
                raise invalid(f"Metadata field {name} is not supported")
        servable = self.servable_for(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        model = self.models.get(spec.name)
        states = model.states() if model is not None else {}
        version = spec.version.value if spec.HasField("version") else None
        if spec.version_label and model is not None:
            version = model.resolve_label(spec.version_label)
        response = get_model_status_pb2.GetModelStatusResponse()
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            selected = {version: states[version]}
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {spec.name}")
            selected = states
        for number in sorted(selected):
            state = selected[number]
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = state.state
            entry.status.error_code = state.error_code
            entry.status.error_message = state.error_message
        return response

    # ------------------------------------------------------------------ Classify, Regress
    def classify_or_regress(self, kind: str, model_spec) -> None:
        """Raises what TF Serving answers a Classify/Regress on this model's signature."""
        servable = self.servable_for(model_spec)
        name = model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def = servable.signature_defs.get(name)
        if signature_def is None:
            raise invalid(f"No signature was found with the name: {name}")
        check_inference_signature(kind, signature_def)
        raise RequestError(  # a real classification/regression signature (never exported here)
            grpc.StatusCode.UNIMPLEMENTED,
            f"{kind} on tf.Example inputs is not implemented by tfrs-cosine serve",
        )

    def multi_inference(self, request) -> None:
        """Raises what TF Serving answers a MultiInference on this model's signatures."""
        if not request.tasks:
            raise invalid("MultiInferenceRequest has no tasks")
        model_name, seen = None, set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid("Found ModelSpec with an empty model name.")
            if model_name is not None and task.model_spec.name != model_name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            model_name = task.model_spec.name
            name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise invalid(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            servable = self.servable_for(task.model_spec)
            signature_def = servable.signature_defs.get(name)
            if signature_def is None:
                raise invalid(f"Requested signature not found in model graph: {name}")
            if task.method_name == CLASSIFY_METHOD:
                check_inference_signature("Classify", signature_def)
            elif task.method_name == REGRESS_METHOD:
                check_inference_signature("Regress", signature_def)
            else:
                raise RequestError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Unsupported signature method_name: {task.method_name}",
                )
        raise RequestError(
            grpc.StatusCode.UNIMPLEMENTED,
            "MultiInference on tf.Example inputs is not implemented by tfrs-cosine serve",
        )


def check_inference_signature(kind: str, signature_def) -> None:
    """TF Serving's PreProcessClassification / PreProcessRegression checks, its wording."""
    text = text_format.MessageToString(signature_def, as_one_line=True)
    inputs, outputs = signature_def.inputs, signature_def.outputs
    if len(inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if kind == "Classify":
        if len(outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(outputs)}")
        if "inputs" not in inputs:
            raise invalid(f"No classification inputs found in SignatureDef: {text}")
        if "classes" not in outputs and "scores" not in outputs:
            raise invalid(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {text}'
            )
        return
    if len(outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {text}")
    if "outputs" not in outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {text}")
