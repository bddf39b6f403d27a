"""Fixed-path endpoints found by one dictionary lookup, ahead of Starlette's router.

Starlette's router tries each route's pattern in turn, and every handler runs
inside two exception-handling layers and an adapter, each wrapping ``send``
again. This layer, the innermost middleware, serves the endpoints whose path has
no parameter: it finds the route by method and path, sets the scope keys the
router would (``route``, ``endpoint``, ``path_params``), runs the handler and
answers its errors through the app's own exception handlers. Everything else
(paths with parameters, the docs mount, a wrong method, HEAD, unknown paths)
goes on to Starlette unchanged, so its 404, 405 and redirects still apply.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.endpoints import EndpointRoute

ErrorHandler = Callable[[Request, Any], Awaitable[Response]]


class FixedPathRoutes:
    def __init__(self, app: ASGIApp, *, routes: Iterable[Any], handlers: dict[type, ErrorHandler]) -> None:
        self.app = app
        self.routes = {(route.spec.method, route.path): route for route in routes
                       if isinstance(route, EndpointRoute) and not route.param_convertors}
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
                raise  # RequestContext logs it and answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        # As Starlette looks them up: the most specific class the exception is an instance of.
        return next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None)
