"""Clients for an exported recommender behind TF Serving's gRPC or REST API.

``RecommenderClient`` speaks TF Serving's gRPC API with the wire-compatible messages of
``serving.wire`` (no TensorFlow: importing it takes a fraction of a second, not the ~5 s
of ``tensorflow_serving.apis``); ``RestRecommenderClient`` speaks the REST API over
plain HTTP (urllib). Both have the same methods and run unchanged against
``tensorflow_model_server`` and ``tfrs-cosine serve``.

Signature, input and output names come from ``export.contract`` (docs/architecture.md):

- ``recommend(user_ids)`` -> ``serving_default``: ``item_ids (b, K)``, ``scores (b, K)``,
  ``known_user (b,)``;
- ``explain(user_id, item_ids)`` -> ``explain`` for one user and n items: ``cosine``,
  ``dot``, ``score``, ``item_norms``, ``known_items`` ``(n,)``; ``top_dimensions``,
  ``contributions`` ``(n, m)``; ``user_norm``, ``known_user``,
  ``cosine_is_training_objective`` scalars (the batch axis of one is removed);
- ``similar_items(item_ids)`` -> ``similar_items``: ``item_ids (b, K)``, ``cosine (b, K)``,
  ``known_item (b,)``;
- ``embed_users`` / ``embed_items`` -> ``embeddings (b, d)``;
- ``metadata()`` -> the signatures with input/output dtypes and shapes;
- ``status()`` -> the versions with their states.

Every call has a deadline (``timeout`` seconds); UNAVAILABLE (server down or restarting)
is retried ``retries`` times with exponential backoff, nothing else is. A failed call
raises ``ServingError`` carrying the server's status code and message.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from export.contract import EMBED_ITEMS, EMBED_USERS, EXPLAIN, SERVING_DEFAULT, SIMILAR_ITEMS
from serving import wire
from serving.errors import ServingError
from serving.status import RequestError, code_name
from serving.tensors import fill_tensor_proto, numpy_name, to_ndarray

STATE_NAMES = {number: name for name, number in wire.VERSION_STATES.items()}
SIGNATURE_DEF_FIELD = "signature_def"


@dataclass
class Prediction:
    """The outputs of one Predict call, with the version that answered.

    ``outputs`` maps output names to numpy arrays; strings are decoded to ``str``.
    ``prediction["scores"]`` is ``prediction.outputs["scores"]``.
    """

    outputs: dict[str, np.ndarray]
    model_version: int | None = None
    signature_name: str = ""

    def __getitem__(self, key: str) -> np.ndarray:
        return self.outputs[key]

    def __contains__(self, key: str) -> bool:
        return key in self.outputs

    def keys(self):
        return self.outputs.keys()


@dataclass
class VersionStatus:
    """One entry of GetModelStatus."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class TensorSpec:
    dtype: str  # "string", "float32", "int32", "bool" ...
    shape: list[int] | None  # -1 for an unknown dim, None for unknown rank


@dataclass
class SignatureSpec:
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)


def _decode_strings(array: np.ndarray) -> np.ndarray:
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v, otypes=[object]
        )(array) if array.size else array.astype(object)
    return array


def _string_tensor(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=object)
    return np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else v, otypes=[object])(
        array
    )


def _spec(info) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return TensorSpec(numpy_name(info.dtype), shape)


class _Contract:
    """The export's signatures: request building and result shaping shared by both clients."""

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> Prediction:
        raise NotImplementedError

    def recommend(self, user_ids: Sequence[str] | str) -> Prediction:
        """Top-K items per user: ``item_ids (b, K)``, ``scores (b, K)``, ``known_user (b,)``."""
        (user,) = SERVING_DEFAULT.input_names
        return self.predict(SERVING_DEFAULT.name, {user: _string_tensor(_as_list(user_ids))})

    def explain(self, user_id: str, item_ids: Sequence[str]) -> Prediction:
        """Why ``user_id`` scores each of ``item_ids``; batch axis removed (see module doc)."""
        if not isinstance(user_id, str):
            raise ServingError("explain takes one user id (a string)")
        items = _as_list(item_ids)
        if not items:
            raise ServingError("explain needs at least one item id")
        result = self.predict(
            EXPLAIN.name,
            {
                EXPLAIN.input("user_id").name: _string_tensor([user_id]),
                EXPLAIN.input("item_ids").name: _string_tensor([items]),
            },
        )
        result.outputs = {key: value[0] for key, value in result.outputs.items()}
        return result

    def similar_items(self, item_ids: Sequence[str] | str) -> Prediction:
        """K most similar items (cosine) per item: ``item_ids``, ``cosine (b, K)``, ``known_item``."""
        (item,) = SIMILAR_ITEMS.input_names
        return self.predict(SIMILAR_ITEMS.name, {item: _string_tensor(_as_list(item_ids))})

    def embed_users(self, user_ids: Sequence[str] | str) -> np.ndarray:
        """``(b, d)`` user vectors as the head sees them."""
        (user,) = EMBED_USERS.input_names
        (embeddings,) = EMBED_USERS.output_names
        result = self.predict(EMBED_USERS.name, {user: _string_tensor(_as_list(user_ids))})
        return result[embeddings]

    def embed_items(self, item_ids: Sequence[str] | str) -> np.ndarray:
        """``(b, d)`` item vectors as the head sees them."""
        (item,) = EMBED_ITEMS.input_names
        (embeddings,) = EMBED_ITEMS.output_names
        return self.predict(EMBED_ITEMS.name, {item: _string_tensor(_as_list(item_ids))})[embeddings]


def _as_list(ids: Sequence[str] | str) -> list[str]:
    if isinstance(ids, str):
        return [ids]
    return [str(i) for i in ids]


class RecommenderClient(_Contract):
    """gRPC client of ``tensorflow.serving.PredictionService`` and ``ModelService``.

    The messages are ``serving.wire``'s (byte-identical to the official ones), sent on
    the official method paths, so no TensorFlow is imported.

    Args:
      target: ``host:port`` of the gRPC API (TF Serving's default port is 8500).
      model_name: the served model's name.
      timeout: deadline of every call, in seconds.
      retries: extra attempts after UNAVAILABLE (backoff 0.1 s, doubling, capped at 2 s).
      version: pin a version (default: the server's latest).
      channel: a ready channel (TLS, interceptors) instead of an insecure one to ``target``.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout: float = 10.0,
        retries: int = 3,
        version: int | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        channel: grpc.Channel | None = None,
    ):
        if timeout <= 0:
            raise ServingError("timeout must be positive")
        if retries < 0:
            raise ServingError("retries must be >= 0")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.retries = retries
        self.version = version
        self._channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._methods = {
            name: self._channel.unary_unary(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            for name, (path, request_type, response_type) in wire.METHODS.items()
        }

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, spec, signature: str | None = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature is not None:
            spec.signature_name = signature

    def _call(self, name: str, request):
        method = self._methods[name]
        delay = 0.1
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                details = " ".join((error.details() or "").split())
                raise ServingError(
                    f"{code.name}: {details} (model {self.model_name} at {self.target})",
                    code=code.name,
                ) from None
        raise AssertionError("unreachable")

    def predict(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> Prediction:
        """One Predict call on any signature; inputs are numpy arrays (strings as bytes/str)."""
        request = wire.PredictRequest()
        self._spec(request.model_spec, signature)
        for key, value in inputs.items():
            try:
                fill_tensor_proto(request.inputs[key], np.asarray(value), layout="content")
            except RequestError as error:
                raise ServingError(f"input {key}: {error.message}") from None
        request.output_filter.extend(output_filter)
        response = self._call("Predict", request)
        try:
            outputs = {key: _decode_strings(to_ndarray(p)) for key, p in response.outputs.items()}
        except RequestError as error:
            raise ServingError(f"the server's answer is malformed: {error.message}") from None
        version = response.model_spec.version.value if response.model_spec.HasField("version") else None
        return Prediction(outputs, version, response.model_spec.signature_name)

    def metadata(self) -> dict[str, SignatureSpec]:
        """GetModelMetadata: signature name -> input/output dtypes and shapes."""
        request = wire.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        self._spec(request.model_spec)
        response = self._call("GetModelMetadata", request)
        packed = response.metadata[SIGNATURE_DEF_FIELD]
        if not packed.type_url.endswith("/tensorflow.serving.SignatureDefMap"):
            raise ServingError(f"the server's metadata is a {packed.type_url}, not a SignatureDefMap")
        signature_map = wire.SignatureDefMap.FromString(packed.value)
        return {
            name: SignatureSpec(
                {k: _spec(v) for k, v in signature.inputs.items()},
                {k: _spec(v) for k, v in signature.outputs.items()},
            )
            for name, signature in signature_map.signature_def.items()
        }

    def status(self) -> list[VersionStatus]:
        """GetModelStatus: every version the server knows, with its state and error."""
        request = wire.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call("GetModelStatus", request)
        return [
            VersionStatus(
                int(entry.version),
                STATE_NAMES.get(entry.state, str(entry.state)),
                code_name(entry.status.error_code),
                entry.status.error_message,
            )
            for entry in response.model_version_status
        ]


class RestRecommenderClient(_Contract):
    """The same methods over TF Serving's REST API (plain HTTP, urllib, columnar format).

    Args:
      target: ``host:port`` or ``http://host:port`` of the REST API (default port 8501).
      model_name, timeout, retries, version: as ``RecommenderClient``; connection failures
        and HTTP 503 are retried.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout: float = 10.0,
        retries: int = 3,
        version: int | None = None,
    ):
        if timeout <= 0:
            raise ServingError("timeout must be positive")
        if retries < 0:
            raise ServingError("retries must be >= 0")
        self.base_url = target if "://" in target else f"http://{target}"
        self.base_url = self.base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.retries = retries
        self.version = version

    def _model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        return url

    def _request(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        delay = 0.1
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as error:
                text = error.read().decode("utf-8", "replace")
                if error.code == 503 and attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                try:
                    message = json.loads(text).get("error", text)
                except ValueError:
                    message = text
                message = " ".join(str(message).split())
                raise ServingError(
                    f"HTTP {error.code}: {message} (model {self.model_name} at {self.base_url})",
                    code=_HTTP_TO_CODE.get(error.code, "UNKNOWN"),
                    http_status=error.code,
                ) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                reason = getattr(error, "reason", error)
                raise ServingError(
                    f"UNAVAILABLE: cannot reach {self.base_url}: {reason}", code="UNAVAILABLE"
                ) from None
        raise AssertionError("unreachable")

    def predict(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> Prediction:
        """One :predict call (columnar ``inputs`` format) on any signature."""
        if output_filter:
            raise ServingError("the REST API has no output_filter; use the gRPC client")
        body = {
            "signature_name": signature,
            "inputs": {key: _to_json(np.asarray(value)) for key, value in inputs.items()},
        }
        answer = self._request(self._model_url() + ":predict", body)
        outputs = answer["outputs"]
        if not isinstance(outputs, dict):  # a single-output signature answers the bare value
            outputs = {"output": outputs}
        arrays = {key: _from_json(value) for key, value in outputs.items()}
        return Prediction(arrays, self.version, signature)

    def metadata(self) -> dict[str, SignatureSpec]:
        answer = self._request(self._model_url() + "/metadata")
        signatures = answer["metadata"]["signature_def"]["signature_def"]

        def spec(info: dict) -> TensorSpec:
            shape_info = info.get("tensor_shape", {})
            shape = (
                None
                if shape_info.get("unknown_rank")
                else [int(d["size"]) for d in shape_info.get("dim", [])]
            )
            dtype = info["dtype"].removeprefix("DT_").lower()
            return TensorSpec({"float": "float32", "double": "float64"}.get(dtype, dtype), shape)

        return {
            name: SignatureSpec(
                {k: spec(v) for k, v in signature.get("inputs", {}).items()},
                {k: spec(v) for k, v in signature.get("outputs", {}).items()},
            )
            for name, signature in signatures.items()
        }

    def status(self) -> list[VersionStatus]:
        answer = self._request(self._model_url())
        return [
            VersionStatus(
                int(entry["version"]),
                entry["state"],
                entry.get("status", {}).get("error_code", "OK"),
                entry.get("status", {}).get("error_message", ""),
            )
            for entry in answer["model_version_status"]
        ]


_HTTP_TO_CODE = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    500: "INTERNAL",
}


def _to_json(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        return np.vectorize(
            lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[object]
        )(array).tolist()
    return array.tolist()


def _from_json(value: Any) -> np.ndarray:
    probe = value
    while isinstance(probe, list) and probe:
        probe = probe[0]
    if isinstance(probe, str) or isinstance(probe, dict):
        def leaf(v):
            return base64.b64decode(v["b64"]).decode("utf-8", "replace") if isinstance(v, dict) else v

        return np.vectorize(leaf, otypes=[object])(np.asarray(value, dtype=object))
    if isinstance(probe, bool):
        return np.asarray(value, dtype=bool)
    if isinstance(probe, int):
        return np.asarray(value, dtype=np.int32)
    return np.asarray(value, dtype=np.float32)
