"""The app factory: ``create_app(settings)``; the models load in the lifespan.

The app gathers the protocols' route tables (``service.protocols``), the
service's own endpoints and the docs page, behind one middleware; the gRPC
service, when a port is set, runs in the same event loop on the same registry.

It stands above both the protocols and the HTTP edge (``service.web``): the
protocols build their routes from the edge's plumbing, and only this module
knows them all, so the imports point one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.core.backends.onnxruntime_backend import share_one_thread_pool
from service.core.failures import Failure
from service.core.manifest import Manifest
from service.core.metrics import Metrics
from service.core.origin import Trust, load_trusted
from service.core.registry import ModelRegistry
from service.core.tracing import Tracing
from service.core.tracing import from_environment as tracing_from_environment
from service.protocols.oip import repository as oip_repository
from service.protocols.oip import rest as oip_rest
from service.protocols.tei import routes as tei_routes
from service.settings import Settings
from service.web import docs, health, openapi
from service.web.errors import EdgeError, MethodNotAllowed, RouteNotFound, answer
from service.web.middleware import RequestContext
from service.web.routing import FixedPathRoutes, dialect_of, open_paths, routes

log = logging.getLogger("service.app")


def _checked(registry: ModelRegistry, on_fatal: Callable[[str], None] | None, task: asyncio.Task) -> None:
    """The loading task's end: a crash is logged at once and ends the wait for models, rather than leaving
    the server "loading" for ever with its traceback held until shutdown."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    log.error("loading the models failed", exc_info=error)
    reason = f"loading the models failed: {type(error).__name__}"
    registry.crashed(reason)
    if on_fatal is not None:  # nothing will load: stop, so that a supervisor restarts the process
        on_fatal(reason)


async def _error(request: Request, exc: Any) -> JSONResponse:
    status, body, headers = answer(exc, dialect_of(request.scope))
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 405:
        status, body, _ = answer(MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}"))
        return JSONResponse(body, status_code=status, headers=dict(exc.headers or {}))
    if exc.status_code == 404:
        return await _error(request, RouteNotFound(f"no route {request.url.path}"))
    return JSONResponse({"error": str(exc.detail), "error_type": "http"}, status_code=exc.status_code)


def create_app(
    settings: Settings,
    manifest: Manifest | None = None,
    *,
    sole_caller: Callable[[], bool] | None = None,
    on_fatal: Callable[[str], None] | None = None,
    tracing: Tracing | None = None,
) -> Starlette:
    """Build the app. With ``--bundle`` its hashes are checked here, before any traffic; a
    repository's bundles are checked as they load (``service.core.registry``). ``sole_caller``
    tells the core whether the request being served is the only one the process has (the HTTP
    connection layer offers it when HTTP is the only way in)."""
    if settings.repository:
        # Before any session exists: ONNX Runtime creates its environment with the first one.
        share_one_thread_pool(settings.intra_op_threads, settings.inter_op_threads)
    else:
        manifest = manifest or load_trusted(Path(settings.bundle), Trust.of(settings))
    metrics = Metrics()
    tracing = tracing or tracing_from_environment()  # off unless an OTLP endpoint is set
    registry = ModelRegistry(settings, metrics, manifest, sole_caller=sole_caller, on_fatal=on_fatal, tracing=tracing)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Serve /live and a 503 /health while the sessions load and warm up.
        loading = asyncio.create_task(registry.start())
        loading.add_done_callback(functools.partial(_checked, registry, on_fatal))
        grpc_server = None
        if settings.grpc_port:  # grpcio is optional: import it only when asked for
            from service.protocols.oip import grpc_service

            grpc_server = await grpc_service.start(registry, settings)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.drain_timeout)
            await asyncio.gather(loading, return_exceptions=True)  # its failure was told when it happened
            await registry.stop()
            await asyncio.to_thread(tracing.shutdown)  # the spans still buffered go out

    endpoints = [
        *tei_routes.ENDPOINTS,
        *health.ENDPOINTS,
        *oip_rest.ENDPOINTS,
        *oip_repository.ENDPOINTS,
        *openapi.ENDPOINTS,
        *docs.ENDPOINTS,
    ]
    middleware = [
        Middleware(
            RequestContext,
            api_keys=settings.api_keys,
            high_priority_keys=settings.high_priority_keys,
            open_paths=open_paths(endpoints),
            metrics=metrics,
            tracing=tracing,
        )
    ]
    if settings.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "x-request-timeout", "x-priority", "traceparent"],
            )
        )
    table = [*routes(endpoints), *docs.MOUNTS]
    # Any other exception is logged and answered by RequestContext (service.web.middleware).
    error_handlers: dict[Any, Any] = {Failure: _error, EdgeError: _error, HTTPException: _http_error}
    middleware.append(Middleware(FixedPathRoutes, routes=table, handlers=error_handlers))
    app = Starlette(routes=table, middleware=middleware, exception_handlers=error_handlers, lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tracing = tracing
    app.state.endpoints = endpoints
    return app
