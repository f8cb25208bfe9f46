"""TF Serving's REST API as a WSGI application, served by waitress.

Routes (as ``http_rest_api_handler.cc``):

- ``GET /v1/models/NAME[/versions/N|/labels/L]``: GetModelStatus as JSON;
- ``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``: the SignatureDefMap;
- ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``: row (``instances``) or
  columnar (``inputs``) format, answered ``predictions`` or ``outputs``;
- ``POST ...:classify`` / ``...:regress``: TF Serving's answer for signatures that are not
  classification/regression signatures (INVALID_ARGUMENT, 400; see ``serving.core``);
- ``GET`` the Prometheus path (``--monitoring_config_file``) when metrics are enabled.

Limits: a body above ``--max_request_bytes`` gets 413 with a JSON ``{"error": ...}`` body
(waitress refuses it before reading it; ``JsonErrorChannel`` words waitress's own errors
as JSON too); JSON nested deeper than ``serving.json_codec.MAX_JSON_DEPTH`` gets 400; any
unexpected failure is logged and answered 500 with a JSON body, and no input is known to
cause one (the unit tests send every malformed shape of request there is).
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from serving.core import SIGNATURE_DEF_FIELD, ServerCore
from serving.json_codec import outputs_to_json, parse_body, request_inputs
from serving.servable import DEFAULT_SIGNATURE
from serving.status import RequestError, invalid, not_found

log = logging.getLogger("tfrs_cosine.serving")

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_JSON = [("Content-Type", "application/json")]


class JsonErrorTask(ErrorTask):
    """waitress's own error answers (413 too large, 400 malformed HTTP) as JSON bodies."""

    def execute(self):
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode("utf-8")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(_JSON)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


# (method, path, HTTP status, model, signature, version, milliseconds) per request.
AccessLog = Callable[[str, str, str, str, str, str, float], None]


class RestApp:
    """The WSGI application on one ServerCore."""

    def __init__(
        self,
        core: ServerCore,
        metrics=None,
        metrics_path: str | None = None,
        access_log: AccessLog | None = None,
    ):
        self.core = core
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.access_log = access_log

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        info: dict[str, Any] = {}
        headers = _JSON
        if self.metrics_path and path == self.metrics_path and method == "GET":
            status = "200 OK"
            data, content_type = self.metrics.exposition()
            headers = [("Content-Type", content_type)]
        else:
            status, body = self.handle(method, path, environ, info)
            data = body.encode("utf-8")
        start_response(status, [*headers, ("Content-Length", str(len(data)))])
        seconds = time.perf_counter() - started
        if "model" in info:
            if self.metrics is not None:
                self.metrics.request(
                    info["model"], info.get("signature", ""), info["api"], "REST",
                    info.get("code", "OK"), seconds,
                )
            if self.access_log is not None:
                self.access_log(
                    method, path, status.split()[0], info["model"], info.get("signature", "-"),
                    str(info.get("version", "-")), seconds * 1000,
                )
        return [data]

    def handle(self, method: str, path: str, environ, info: dict[str, Any]) -> tuple[str, str]:
        """(HTTP status line, JSON body) of one request; fills ``info`` for logs and metrics."""
        try:
            return "200 OK", self._dispatch(method, path, environ, info)
        except RequestError as error:
            info["code"] = error.code.name
            return error.http_status, json.dumps({"error": error.message})
        except Exception as error:  # a bug: logged, answered 500 with a JSON body
            log.exception("REST %s %s failed", method, path)
            info["code"] = grpc.StatusCode.INTERNAL.name
            return "500 Internal Server Error", json.dumps({"error": f"{type(error).__name__}: {error}"})

    @staticmethod
    def _read_body(environ) -> bytes:
        # waitress has already read the body and refused it (413) above its limit.
        stream = environ.get("wsgi.input")
        return stream.read() if stream is not None else b""

    def _dispatch(self, method: str, path: str, environ, info: dict[str, Any]) -> str:
        if not path.lower().startswith("/v1/"):
            raise not_found(f"Not found: {method} {path}")
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            spec = self._model_spec(name, version, label)
            info.update(model=spec.name, api=verb.capitalize())
            document = parse_body(self._read_body(environ))
            if verb.lower() != "predict":
                return self._classify_or_regress(verb.capitalize(), spec, document, info)
            return self._predict(spec, document, info)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            spec = self._model_spec(name, version, label)
            info.update(model=spec.name, api="GetModelMetadata" if subresource else "GetModelStatus")
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
            try:
                spec.version.value = int(version)
            except ValueError:
                raise invalid(f"version {version} is out of range") from None
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

    def _classify_or_regress(self, kind: str, spec, document: dict, info: dict[str, Any]) -> str:
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("'signature_name' key must be a string value.")
        spec.signature_name = signature_name
        info["signature"] = signature_name or DEFAULT_SIGNATURE
        if "examples" not in document:
            raise invalid("Missing 'examples' key")
        self.core.classify_or_regress(kind, spec)
        raise AssertionError("classify_or_regress always raises")

    def _predict(self, spec, document: dict, info: dict[str, Any]) -> str:
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid(
                "JSON Value not formatted correctly. 'signature_name' key must be a string value."
            )
        servable = self.core.servable_for(spec)
        key = signature_name or DEFAULT_SIGNATURE
        info.update(signature=key, version=servable.version)
        signature = servable.signatures.get(key)
        if signature is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        if not signature.input_dtypes:
            raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        inputs, fmt = request_inputs(document, signature.input_dtypes)
        outputs = self.core.run(servable, signature, inputs)
        return outputs_to_json(outputs, fmt)
