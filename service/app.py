"""The app factory: ``create_app(settings)``; the model loads in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import docs, openapi, repository_routes, routes, v2
from service.classifier import share_one_thread_pool
from service.dispatch import FixedPathRoutes
from service.endpoints import dialect_of, open_paths
from service.endpoints import routes as route_table
from service.errors import MethodNotAllowed, NotFound, ServiceError, from_failure
from service.failures import EngineFailure
from service.manifest import Manifest, load_verified
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.middleware import RequestContext
from service.settings import Settings

log = logging.getLogger("service.app")


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    dialect = dialect_of(request.scope)
    return JSONResponse(exc.body(dialect), status_code=exc.status(dialect), headers=exc.headers)


async def _engine_failure(request: Request, exc: EngineFailure) -> JSONResponse:
    return await _service_error(request, from_failure(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 405:
        error: ServiceError = MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}")
        return JSONResponse(error.body(), status_code=405, headers=dict(exc.headers or {}))
    if exc.status_code == 404:
        return await _service_error(request, NotFound(f"no route {request.url.path}"))
    return JSONResponse({"error": str(exc.detail), "error_type": "http"}, status_code=exc.status_code)


def create_app(settings: Settings, manifest: Manifest | None = None) -> Starlette:
    """Build the app. With ``--bundle`` its hashes are checked here, before any traffic; a
    repository's bundles are checked as they load (``service.registry``)."""
    if settings.repository:
        # Before any session exists: ONNX Runtime creates its environment with the first one.
        share_one_thread_pool(settings.intra_op_threads, settings.inter_op_threads)
    else:
        manifest = manifest or load_verified(settings.bundle)
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics, manifest)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Serve /live and a 503 /health while the sessions load and warm up.
        loading = asyncio.create_task(registry.start())
        grpc_server = None
        if settings.grpc_port:  # grpcio is optional: import it only when asked for
            from service import v2_grpc

            grpc_server = await v2_grpc.start(registry, settings)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.drain_timeout)
            await loading
            await registry.stop()

    endpoints = [*routes.ENDPOINTS, *v2.ENDPOINTS, *repository_routes.ENDPOINTS, *openapi.ENDPOINTS,
                 *docs.ENDPOINTS]
    middleware = [Middleware(RequestContext, api_keys=settings.api_keys, open_paths=open_paths(endpoints),
                             metrics=metrics)]
    if settings.cors_allow_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_allow_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"]))
    table = [*route_table(endpoints), *docs.MOUNTS]
    # Any other exception is logged and answered by RequestContext (service.middleware).
    error_handlers = {ServiceError: _service_error, EngineFailure: _engine_failure, HTTPException: _http_error}
    middleware.append(Middleware(FixedPathRoutes, routes=table, handlers=error_handlers))
    app = Starlette(routes=table, middleware=middleware, exception_handlers=error_handlers, lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.endpoints = endpoints
    return app
