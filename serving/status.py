"""Request outcomes: ``RequestError`` (a gRPC status and message) and its HTTP status.

A request the server cannot answer with a result raises ``RequestError``; the gRPC
services abort with its code and the REST app answers the HTTP status TF Serving's
``http_server.cc`` (``ToHTTPStatusCode``) maps that code to. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import grpc

# gRPC status -> HTTP status line (TF Serving's ToHTTPStatusCode).
HTTP_STATUS = {
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
# Status number (tensorflow.error.Code, the same numbers as gRPC's) -> grpc.StatusCode.
CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class RequestError(Exception):
    """A request answered with a non-OK status: never a server failure.

    ``code`` is a ``grpc.StatusCode``; ``message`` is one line, worded as TF Serving
    words it where it has the same error.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> str:
        return HTTP_STATUS.get(self.code, "500 Internal Server Error")


def invalid(message: str) -> RequestError:
    """INVALID_ARGUMENT with ``message``."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    """NOT_FOUND with ``message``."""
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def code_name(number: int) -> str:
    """``5`` -> ``"NOT_FOUND"`` (the number itself when unknown)."""
    code = CODE_BY_NUMBER.get(number)
    return code.name if code is not None else str(number)
