"""The route table: every endpoint declared once, and the fast path that serves the fixed ones.

Starlette's routes, the auth allow-list (``open``), the OpenAPI document and the
error dialect of each endpoint all come from ``Endpoint`` records, so they cannot
drift apart.

``FixedPathRoutes`` finds the endpoints whose path has no parameter by one
dictionary lookup, ahead of Starlette's router: the router tries each route's
pattern in turn, and every handler runs inside two exception-handling layers and
an adapter, each wrapping ``send`` again. It sets the scope keys the router would
(``route``, ``endpoint``, ``path_params``), runs the handler and answers its errors
through the app's own handlers. Everything else (paths with parameters, the docs
mount, a wrong method, HEAD, unknown paths) goes on to Starlette unchanged, so
its 404, 405 and redirects still apply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.loaded import Loaded

Handler = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Awaitable[Response]]
# How errors look on an endpoint: this service's {error, error_type}; text-embeddings-
# inference's {error, error_type} with its own type names; the Open Inference Protocol's {error}.
Dialect = Literal["service", "tei", "v2"]
# The request's Call (service.core.calls), opened by the middleware.
CALL = "service.call"


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: Literal["GET", "POST"]
    handler: Handler
    summary: str
    description: str = ""
    request: Any = None  # a pydantic model of the JSON body
    response: Any = None  # a type pydantic can describe; None for a non-JSON body
    response_media_type: str = "application/json"
    errors: tuple[int, ...] = ()
    open: bool = False  # served without an API key
    dialect: Dialect = "service"
    tag: str = "service"
    in_schema: bool = True


class EndpointRoute(Route):
    """A Starlette route that remembers its Endpoint (the error handler reads its dialect)."""

    def __init__(self, spec: Endpoint) -> None:
        super().__init__(spec.path, spec.handler, methods=[spec.method])
        self.spec = spec


def routes(endpoints: list[Endpoint]) -> list[Route]:
    return [EndpointRoute(spec) for spec in endpoints]


def open_paths(endpoints: list[Endpoint]) -> frozenset[str]:
    return frozenset(spec.path for spec in endpoints if spec.open)


def dialect_of(scope: Scope) -> Dialect:
    route = scope.get("route")
    return route.spec.dialect if isinstance(route, EndpointRoute) else "service"


def urgency(request: Request) -> dict[str, Any]:
    """The call's deadline and priority, from its headers, as ``Engine.classify`` takes them."""
    call = request.scope[CALL]
    return {"deadline": call.deadline, "priority": call.priority}


def hold(request: Request, name: str | None = None, version: str | None = None) -> Loaded:
    """The model version a request names (the default model without a name), held until it has answered."""
    return request.app.state.registry.hold(request.scope[CALL], name, version)


class FixedPathRoutes:
    def __init__(self, app: ASGIApp, *, routes: Iterable[Any], handlers: dict[type, ErrorHandler]) -> None:
        self.app = app
        self.routes: dict[tuple[str | None, str | None], EndpointRoute] = {
            (route.spec.method, route.path): route
            for route in routes
            if isinstance(route, EndpointRoute) and not route.param_convertors
        }
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the middleware logs it and answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        # As Starlette looks them up: the most specific class the exception is an instance of.
        return next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None)
