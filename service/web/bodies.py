"""Reading request bodies safely: size counted as the bytes stream in, content type checked."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from service.core.failures import PayloadTooLarge, UnsupportedMediaType


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
        raise UnsupportedMediaType(f"content type {media_type or 'missing'!r} is not supported; send application/json")
    return await read_body(request, limit)
