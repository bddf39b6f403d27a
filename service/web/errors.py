"""Every error over HTTP as ``{"error": str, "error_type": str}``: one table, three dialects.

The core's and the decoders' failures (``service.core.failures``) map here, once:

======================  ======  ======================  ============
failure                 status  error_type              TEI's name
======================  ======  ======================  ============
BadRequest              400     bad_request
MalformedBody           400     malformed_json
EmptyInput              400     empty                   Empty
LoadRefused             400     bad_request
Unauthenticated         401     unauthorized
Forbidden               403     forbidden
ModelNotFound           404     not_found
PayloadTooLarge         413     payload_too_large
UnsupportedMediaType    415     unsupported_media_type
InvalidInput            422     validation              Validation
InputTooLong            422     validation              Validation
QueueFull               429     overloaded              Overloaded
DeadlineExceeded        504     deadline_exceeded
Failure (anything else) 500     internal                Backend
NotReady                503     unhealthy
ShuttingDown            503     unavailable
VersionUnloaded         503     unavailable
======================  ======  ======================  ============

Errors of HTTP itself, which no other transport has, are ``EdgeError``\\s with their
own status: 404 for an unknown path, 405, 408 for a slow client, 431 for a large
head, 503 over the connection cap. A client that left gets no answer; its request
is recorded as 499 (``CLIENT_GONE``).

One error, three dialects (``service.web.routing.Dialect``): this service's body; on
text-embeddings-inference's routes the same body with TEI's type names where it has
them; on Open Inference Protocol routes the same body (its clients read ``error``)
with 400 for any bad request, as that protocol specifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core import failures

CLIENT_GONE = 499


@dataclass(frozen=True)
class HttpError:
    status: int
    error_type: str
    tei_type: str | None = None  # TEI's name for this type, where TEI has one
    headers: dict[str, str] = field(default_factory=dict)


_BAD_REQUEST = HttpError(400, "bad_request")
_VALIDATION = HttpError(422, "validation", "Validation")
_UNAVAILABLE = HttpError(503, "unavailable")
FAILURES: dict[type[failures.Failure], HttpError] = {
    failures.Failure: HttpError(500, "internal", "Backend"),
    failures.BadRequest: _BAD_REQUEST,
    failures.MalformedBody: HttpError(400, "malformed_json"),
    failures.EmptyInput: HttpError(400, "empty", "Empty"),
    failures.LoadRefused: _BAD_REQUEST,
    failures.Unauthenticated: HttpError(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"}),
    failures.Forbidden: HttpError(403, "forbidden"),
    failures.ModelNotFound: HttpError(404, "not_found"),
    failures.PayloadTooLarge: HttpError(413, "payload_too_large"),
    failures.UnsupportedMediaType: HttpError(415, "unsupported_media_type"),
    failures.InvalidInput: _VALIDATION,
    failures.InputTooLong: _VALIDATION,
    failures.QueueFull: HttpError(429, "overloaded", "Overloaded"),
    failures.DeadlineExceeded: HttpError(504, "deadline_exceeded"),
    # One spelling on every route, readiness probes and TEI's routes alike: TEI's "Unhealthy" on /predict beside
    # "unhealthy" on /health named one state twice.
    failures.NotReady: HttpError(503, "unhealthy"),
    failures.ShuttingDown: _UNAVAILABLE,
    failures.VersionUnloaded: _UNAVAILABLE,
}


class EdgeError(Exception):
    """An error of HTTP itself, with its status."""

    error = HttpError(500, "internal")

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class RouteNotFound(EdgeError):
    error = HttpError(404, "not_found")


class MethodNotAllowed(EdgeError):
    error = HttpError(405, "method_not_allowed")


class RequestTimeout(EdgeError):
    error = HttpError(408, "request_timeout")


class HeaderTooLarge(EdgeError):
    error = HttpError(431, "header_too_large")


class ConnectionLimit(EdgeError):
    error = _UNAVAILABLE


def http_error(exc: failures.Failure | EdgeError) -> HttpError:
    if isinstance(exc, EdgeError):
        return exc.error
    # The most specific class the failure is an instance of, as exception handlers pick.
    return next(FAILURES[cls] for cls in type(exc).__mro__ if cls in FAILURES)


def answer(exc: failures.Failure | EdgeError, dialect: str = "service") -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, body and headers of ``exc`` in ``dialect``."""
    error = http_error(exc)
    status = 400 if dialect == "v2" and error.status == 422 else error.status
    error_type = error.tei_type if dialect == "tei" and error.tei_type else error.error_type
    headers = dict(error.headers)
    if isinstance(exc, EdgeError):
        headers.update(exc.headers)
    elif exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return status, {"error": exc.message, "error_type": error_type}, headers


# Status of every error_type, by this service's names and by TEI's (the API tests and OpenAPI read these).
_ALL = [*FAILURES.values(), *(cls.error for cls in EdgeError.__subclasses__())]
ERROR_TABLE = {error.error_type: error.status for error in _ALL}
TEI_ERROR_TABLE = {error.tei_type: error.status for error in _ALL if error.tei_type}
