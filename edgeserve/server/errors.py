"""What a protocol request can fail with, and how each transport says it: an HTTP status and a gRPC code.

The core's errors (:mod:`edgeserve.errors`) carry no status; :func:`from_core` maps them once, here."""

from __future__ import annotations

from ..errors import (
    ClosedError,
    EdgeserveError,
    EnvelopeError,
    InferenceError,
    InputError,
    ModelNotFound,
    QueueFull,
    Timeout,
    first_line,
)


class ProtocolError(Exception):
    status = 500
    code = "INTERNAL"
    """The gRPC status code's name (``grpc.StatusCode``)."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(ProtocolError):
    status, code = 400, "INVALID_ARGUMENT"


class Unauthorized(ProtocolError):
    status, code = 401, "UNAUTHENTICATED"


class Forbidden(ProtocolError):
    status, code = 403, "PERMISSION_DENIED"


class NotFound(ProtocolError):
    status, code = 404, "NOT_FOUND"


class MethodNotAllowed(ProtocolError):
    status, code = 405, "UNIMPLEMENTED"


class TooLarge(ProtocolError):
    status, code = 413, "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(ProtocolError):
    status, code = 415, "INVALID_ARGUMENT"


class Unprocessable(ProtocolError):
    """Well-formed, but the model refused it (an engine error on this input)."""

    status, code = 422, "FAILED_PRECONDITION"


class Unavailable(ProtocolError):
    status, code = 503, "UNAVAILABLE"


class DeadlineExceeded(Unavailable):
    code = "DEADLINE_EXCEEDED"


def from_core(exc: EdgeserveError) -> ProtocolError:
    """The protocol error for a core error (its message is the user's: it names what was wrong)."""
    message = first_line(exc, 2000)
    if isinstance(exc, EnvelopeError):  # well-formed, but values the model's guard will not run
        return Unprocessable(message)
    if isinstance(exc, InputError):
        return BadRequest(message)
    if isinstance(exc, ModelNotFound):
        return NotFound(message)
    if isinstance(exc, QueueFull):
        return Unavailable(message, retry_after_s=1)
    if isinstance(exc, Timeout):
        return DeadlineExceeded(message)
    if isinstance(exc, ClosedError):
        return Unavailable(message, retry_after_s=1)
    if isinstance(exc, InferenceError):
        return Unprocessable(message)
    return ProtocolError(message)
