"""Reading request bodies safely, and dropping work whose client has gone.

Bodies are JSON only, their size counted as they stream in, and parsed and
validated in one pass by pydantic (which also refuses lone surrogates, invalid
UTF-8 and absurd nesting as malformed JSON rather than failing later).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Mapping, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.errors import ClientGone, MalformedJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, whatever its content type; refused once more than ``limit`` bytes arrive."""
    body = bytearray()
    # Content-Length can lie or be absent (chunked); only the bytes received count.
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


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


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task, cancelling it if the client disconnects first.

    Cancelling reaches the batcher's futures, so inputs of a departed client are
    dropped before they run. The body has been read by now, so the next ASGI
    message can only be the disconnect. The work runs in the request's own task
    (no second task, no ``asyncio.wait``): only the watcher is extra.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def on_watcher_done(watcher: asyncio.Future) -> None:
        nonlocal gone
        if not watcher.cancelled() and watcher.exception() is None:
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(on_watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGone("the client disconnected before its answer was ready") from None
    finally:
        watcher.remove_done_callback(on_watcher_done)
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
