"""The service's own endpoints: readiness, liveness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.failures import NotReady
from service.core.metrics import CONTENT_TYPE
from service.web.responses import Status
from service.web.routing import Endpoint


async def health(request: Request) -> Response:
    registry = request.app.state.registry
    if not registry.ready:
        raise NotReady(registry.not_ready_reason)
    return JSONResponse({"status": "ok"})


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


ENDPOINTS = [
    Endpoint(
        "/health",
        "GET",
        health,
        "Readiness",
        "200 once the models found at start are loaded and warmed up (and while one serves), 503 with the "
        "reason before.",
        response=Status,
        errors=(503,),
        open=True,
    ),
    Endpoint("/live", "GET", live, "Liveness", "200 while the process serves HTTP.", response=Status, open=True),
    Endpoint(
        "/metrics",
        "GET",
        metrics,
        "Prometheus metrics",
        "Requests, phase latencies, batch sizes, queue depth, admitted inputs, cache hits.",
        response_media_type="text/plain",
        open=True,
    ),
]
