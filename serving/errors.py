"""The serving package's error type: one-line message, optional RPC status code."""

from __future__ import annotations

from tfrs_cosine.errors import TfrsCosineError


class ServingError(TfrsCosineError):
    """Bad input to a serving command, or a failed call to a model server.

    ``code`` is the gRPC status name (``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``,
    ``"UNAVAILABLE"`` ...) when the error came from a server, else ``None``;
    ``http_status`` is set by the REST client. The message is one line and names the
    problem, with the server's own message when there is one.
    """

    def __init__(self, message: str, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.http_status = http_status
