"""Every error the service returns, as ``{"error": str, "error_type": str}``.

ServiceError
├── BadRequest             400 bad_request       (Open Inference Protocol requests)
├── MalformedJson          400 malformed_json
├── Unauthorized           401 unauthorized
├── NotFound               404 not_found
├── MethodNotAllowed       405 method_not_allowed
├── PayloadTooLarge        413 payload_too_large
├── UnsupportedMediaType   415 unsupported_media_type
├── ValidationFailed       422 validation
├── Overloaded             429 overloaded        (with Retry-After)
├── NotReady               503 unhealthy
└── InternalError          500 internal
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class BadRequest(ServiceError):
    status_code, error_type = 400, "bad_request"


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


class InternalError(ServiceError):
    status_code, error_type = 500, "internal"


ERROR_TABLE = {cls.error_type: cls.status_code for cls in ServiceError.__subclasses__()}
