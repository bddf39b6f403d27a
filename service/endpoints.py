"""The route table: every endpoint declared once, with what the rest derives from it.

Starlette's routes, the auth allow-list (``open``), the OpenAPI document and the
error dialect of each endpoint all come from ``Endpoint`` records, so they cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]
# How errors look on an endpoint: this service's {error, error_type}; text-embeddings-
# inference's {error, error_type} with its own type names; the Open Inference Protocol's {error}.
Dialect = Literal["service", "tei", "v2"]


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


def dialect_of(scope: dict) -> Dialect:
    route = scope.get("route")
    return route.spec.dialect if isinstance(route, EndpointRoute) else "service"
