"""Reading request bodies safely, and the scope keys that let a departed client's work stop.

Bodies are JSON only, their size counted as they stream in, and parsed and
validated in one pass by pydantic (which also refuses lone surrogates, invalid
UTF-8 and absurd nesting as malformed JSON rather than failing later).

When a client disconnects before its answer is out, the HTTP protocol
(``service.protocol``) marks the scope ``CLIENT_GONE`` and cancels the task in
``REQUEST_TASK``. Cancelling reaches the batcher's futures, so the inputs of a
departed client are dropped before they run, on every route, and a request
pays nothing for the watch.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from service.errors import MalformedJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

Model = TypeVar("Model", bound=BaseModel)
# Scope keys: the task serving the request (set by RequestContext), and the mark of a departed client.
REQUEST_TASK = "service.request_task"
CLIENT_GONE = "service.client_gone"


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, whatever its content type; refused once more than ``limit`` bytes arrive."""
    # Content-Length can lie or be absent (chunked); only the bytes received count. The
    # ASGI messages are read directly: Request.stream's generator costs every request.
    received = bytearray()  # grows in place: a body sent in many small chunks stays linear
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        received += message.get("body", b"")
        if len(received) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return bytes(received)


async def json_body(request: Request, limit: int) -> bytes:
    """The raw body of a JSON request, refused for any other content type or over ``limit`` bytes."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"content type {media_type or 'missing'!r} is not supported; send application/json"
        )
    return await read_body(request, limit)


async def parse_json(request: Request, model: type[Model], limit: int, context: Mapping[str, Any]) -> Model:
    return parse(model, await json_body(request, limit), context)


def parse(model: type[Model], body: bytes, context: Mapping[str, Any] | None = None) -> Model:
    try:
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise MalformedJson(f"request body is not valid JSON: {errors[0]['ctx']['error']}") from None
        raise ValidationFailed(describe(errors)) from None


def describe(errors: list[Any]) -> str:
    problems = []
    for error in errors:
        # Our own validators' messages stand alone; pydantic would prefix "Value error, ".
        message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
