"""What every HTTP protocol answers with: the error body, states, and the timing headers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.engine import Classified
from service.web.routing import CALL


def model_of(source: type, name: str, doc: str, **descriptions: str) -> type[BaseModel]:
    """A pydantic model ``name`` of a core dataclass (the core knows no pydantic), field for field and every field
    required; ``descriptions`` document some fields in the OpenAPI document."""
    hints = typing.get_type_hints(source)
    names = [field.name for field in dataclasses.fields(source)]
    unknown = set(descriptions) - set(names)
    if unknown:
        raise ValueError(f"{source.__name__} has no fields {sorted(unknown)}")
    fields: dict[str, Any] = {name: (hints[name], Field(description=descriptions.get(name))) for name in names}
    return create_model(name, __doc__=doc, __module__=source.__module__, **fields)


class ErrorBody(BaseModel):
    error: str
    error_type: str


class Status(BaseModel):
    status: Literal["ok", "alive"]


class ModelState(BaseModel):
    """One version of one model, as Triton's repository index lists it."""

    name: str
    version: str = Field(description="empty when the model has no version loaded, loading or refused")
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str = Field(description="why it is not READY: the refusal, 'unloaded', ...; empty when READY")


# Answers with more items than this are encoded off the event loop.
INLINE_JSON_ITEMS = 512


async def json_response(content: list[Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, encoded as Starlette's JSONResponse does; a long list is encoded on a thread, so
    a large answer (``/tokenize`` of a long text) does not hold the event loop."""
    if sum(len(item) if isinstance(item, (list, str)) else 1 for item in content) <= INLINE_JSON_ITEMS:
        return JSONResponse(content, headers=headers)
    body = await asyncio.to_thread(_dumps, content)
    return Response(body, media_type="application/json", headers=headers)


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000, 3))


def timing_headers(result: Classified, request: Request) -> dict[str, str]:
    """Where a classification's time went, as TEI reports it (milliseconds)."""
    started = request.scope[CALL].started
    return {
        "x-tokenization-time": _ms(result.tokenize_seconds),
        "x-queue-time": _ms(result.queue_seconds),
        "x-inference-time": _ms(result.inference_seconds),
        "x-total-time": _ms(time.perf_counter() - started),
    }
