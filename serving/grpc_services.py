"""The gRPC services on a ServerCore.

- ``tensorflow.serving.PredictionService``: Predict, GetModelMetadata, and Classify,
  Regress, MultiInference with TF Serving's answers for non-classification signatures;
- ``tensorflow.serving.ModelService``: GetModelStatus (HandleReloadConfigRequest
  answers UNIMPLEMENTED: restart with the new config);
- ``grpc.health.v1.Health`` (grpcio-health-checking): SERVING for the server ("") and
  for each model name only while every configured model has a version AVAILABLE, else
  NOT_SERVING.

Every call goes through ``Handler.call``: RequestError -> its status, any other
exception -> INTERNAL (logged), then metrics and the optional access log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.core import ServerCore
from serving.rest import AccessLog
from serving.status import RequestError

log = logging.getLogger("tfrs_cosine.serving")


class Handler:
    """Status mapping, metrics and the access log around every gRPC method."""

    def __init__(self, core: ServerCore, metrics=None, access_log: AccessLog | None = None):
        self.core = core
        self.metrics = metrics
        self.access_log = access_log

    def call(self, context: grpc.ServicerContext, method: str, request, fn: Callable) -> Any:
        if self.metrics is None and self.access_log is None:
            try:
                return fn(request)
            except RequestError as error:
                context.abort(error.code, error.message)
            except Exception as error:  # a bug must answer INTERNAL, not kill the worker
                log.exception("%s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        started = time.perf_counter()
        code, message, response = grpc.StatusCode.OK, "", None
        try:
            response = fn(request)
        except RequestError as error:
            code, message = error.code, error.message
        except Exception as error:
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
        spec = getattr(request, "model_spec", None)
        if spec is None and getattr(request, "tasks", None):
            spec = request.tasks[0].model_spec
        model = spec.name if spec is not None else "-"
        signature = (spec.signature_name or "serving_default") if spec is not None and method in (
            "Predict", "Classify", "Regress") else ""
        if self.metrics is not None:
            self.metrics.request(model, signature, method, "GRPC", code.name, seconds)
        if self.access_log is not None:
            version = "-"
            if response is not None and hasattr(response, "model_spec") and response.model_spec.HasField("version"):
                version = str(response.model_spec.version.value)
            self.access_log(
                "gRPC", method, code.name + (f" ({message})" if message else ""), model,
                signature or "-", version, seconds * 1000,
            )
        if code != grpc.StatusCode.OK:
            context.abort(code, message)
        return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` on a ServerCore."""

    def __init__(self, handler: Handler):
        self._handler = handler
        self._core = handler.core

    def Predict(self, request, context):  # noqa: N802 (gRPC method names)
        return self._handler.call(context, "Predict", request, self._core.predict)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._handler.call(context, "GetModelMetadata", request, self._core.metadata)

    def Classify(self, request, context):  # noqa: N802
        return self._handler.call(
            context, "Classify", request,
            lambda r: self._core.classify_or_regress("Classify", r.model_spec),
        )

    def Regress(self, request, context):  # noqa: N802
        return self._handler.call(
            context, "Regress", request,
            lambda r: self._core.classify_or_regress("Regress", r.model_spec),
        )

    def MultiInference(self, request, context):  # noqa: N802
        return self._handler.call(context, "MultiInference", request, self._core.multi_inference)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService`` on a ServerCore."""

    def __init__(self, handler: Handler):
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


class ModelHealth:
    """The standard health service, kept in step with the models' availability."""

    def __init__(self, core: ServerCore):
        self.core = core
        self.servicer = health.HealthServicer()
        self.update()
        core.add_listener(lambda *_: self.update())

    def update(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.core.all_available()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.servicer.set("", status)
        for name in self.core.models:
            self.servicer.set(name, status)

    def shutdown(self) -> None:
        """NOT_SERVING from now on (graceful stop)."""
        self.servicer.enter_graceful_shutdown()


def add_services(server: grpc.Server, handler: Handler, model_health: ModelHealth) -> None:
    """Registers the three services on a grpc.Server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(handler), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(handler), server)
    health_pb2_grpc.add_HealthServicer_to_server(model_health.servicer, server)
