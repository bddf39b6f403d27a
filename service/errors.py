"""Every error the service returns, as ``{"error": str, "error_type": str}``.

ServiceError
├── BadRequest             400 bad_request       (Open Inference Protocol requests)
├── MalformedJson          400 malformed_json
├── EmptyInput             400 empty              (TEI: Empty)
├── Unauthorized           401 unauthorized
├── Forbidden              403 forbidden         (the repository API when it is off or API_KEYS is empty)
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

One error, three dialects (``service.endpoints.Dialect``): this service's body
above; on text-embeddings-inference's routes the same body with TEI's names for
the types it has (``Validation``, ``Overloaded``, ``Unhealthy``, ``Empty``,
``Backend``); on Open Inference Protocol routes the same body (its clients read
``error``) with 400 for any bad request, as that protocol specifies.
"""

from __future__ import annotations

from service import failures


class ServiceError(Exception):
    status_code = 500
    error_type = "internal"
    tei_type: str | None = None  # TEI's name for this type, where TEI has one

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self, dialect: str = "service") -> dict[str, str]:
        if dialect == "tei":
            return {"error": self.message, "error_type": self.tei_type or self.error_type}
        return {"error": self.message, "error_type": self.error_type}

    def status(self, dialect: str = "service") -> int:
        if dialect == "v2" and self.status_code == 422:
            return 400
        return self.status_code


class BadRequest(ServiceError):
    status_code, error_type = 400, "bad_request"


class MalformedJson(ServiceError):
    status_code, error_type = 400, "malformed_json"


class EmptyInput(ServiceError):
    status_code, error_type = 400, "empty"
    tei_type = "Empty"


class Unauthorized(ServiceError):
    status_code, error_type = 401, "unauthorized"


class Forbidden(ServiceError):
    status_code, error_type = 403, "forbidden"


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
    tei_type = "Validation"


class Overloaded(ServiceError):
    status_code, error_type = 429, "overloaded"
    tei_type = "Overloaded"


class NotReady(ServiceError):
    status_code, error_type = 503, "unhealthy"
    tei_type = "Unhealthy"


class ClientGone(ServiceError):
    status_code, error_type = 499, "client_gone"


class InternalError(ServiceError):
    status_code, error_type = 500, "internal"
    tei_type = "Backend"


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
    if isinstance(failure, (failures.InputTooLong, failures.InvalidInput)):
        return ValidationFailed(failure.message)
    if isinstance(failure, failures.ShuttingDown):
        return Unavailable(failure.message)
    if isinstance(failure, failures.NotLoaded):
        return NotReady(failure.message)
    return InternalError("internal error; see the server log")


def _all(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _all(child)]


# Status of every error_type as TEI's routes name it (its own names where it has them).
TEI_ERROR_TABLE = {cls.tei_type: cls.status_code for cls in _all(ServiceError) if cls.tei_type}
ERROR_TABLE = {cls.error_type: cls.status_code for cls in ServiceError.__subclasses__()}
