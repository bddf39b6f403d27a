"""Every error the service returns, as ``{"error": str, "error_type": str}``.

ServiceError
├── MalformedJson          400 malformed_json
├── Unauthorized           401 unauthorized
├── NotFound               404 not_found
├── MethodNotAllowed       405 method_not_allowed
├── PayloadTooLarge        413 payload_too_large
├── UnsupportedMediaType   415 unsupported_media_type
├── ValidationFailed       422 validation
├── Overloaded             429 overloaded        (with Retry-After)
├── NotReady               503 unhealthy
├── ClientGone             499 client_gone       (logged only: nobody is left to read it)
├── InternalError          500 internal
├── RequestTimeout         408 request_timeout   (the connection then closes)
├── HeaderTooLarge         431 header_too_large  (the connection then closes)
└── Unavailable            503 unavailable       (shutting down, or over the connection cap)

The engine and batcher raise ``service.failures.EngineFailure``s, which know no
HTTP; ``from_failure`` below is the one place that maps them onto this table.
"""

from __future__ import annotations

from service import failures


class ServiceError(Exception):
    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class MalformedJson(ServiceError):
    status_code, error_type = 400, "malformed_json"


class Unauthorized(ServiceError):
    status_code, error_type = 401, "unauthorized"


class NotFound(ServiceError):
    status_code, error_type = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status_code, error_type = 405, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status_code, error_type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code, error_type = 415, "unsupported_media_type"


class ValidationFailed(ServiceError):
    status_code, error_type = 422, "validation"


class Overloaded(ServiceError):
    status_code, error_type = 429, "overloaded"


class NotReady(ServiceError):
    status_code, error_type = 503, "unhealthy"


class ClientGone(ServiceError):
    status_code, error_type = 499, "client_gone"


class InternalError(ServiceError):
    status_code, error_type = 500, "internal"


class RequestTimeout(ServiceError):
    status_code, error_type = 408, "request_timeout"


class HeaderTooLarge(ServiceError):
    status_code, error_type = 431, "header_too_large"


class Unavailable(ServiceError):
    status_code, error_type = 503, "unavailable"


def from_failure(failure: failures.EngineFailure) -> ServiceError:
    """The HTTP error for a refusal of the engine or batcher."""
    if isinstance(failure, failures.QueueFull):
        return Overloaded(failure.message, headers={"Retry-After": "1"})
    if isinstance(failure, failures.InputTooLong):
        return ValidationFailed(failure.message)
    if isinstance(failure, failures.ShuttingDown):
        return Unavailable(failure.message)
    if isinstance(failure, failures.NotLoaded):
        return NotReady(failure.message)
    return InternalError("internal error; see the server log")


ERROR_TABLE = {cls.error_type: cls.status_code for cls in ServiceError.__subclasses__()}
