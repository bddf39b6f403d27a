"""What every HTTP protocol answers with: the error body, states, and the timing headers."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field
from starlette.requests import Request

from service.core.engine import Classified
from service.web.routing import CALL


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
