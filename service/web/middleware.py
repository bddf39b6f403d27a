"""One pure-ASGI layer around every HTTP request: its Call, API keys, metrics, access log.

It opens the request's ``Call`` (``service.core.calls``: a sanitised request id,
the model version the handler resolves) and finishes it once the response is
out, which releases the version and writes the metric and the access-log line
the same way gRPC calls do.

It is also where an unexpected exception ends: logged once, with its traceback and the
request id, and answered with a 500 that carries ``x-request-id`` like every other
response. Starlette's ServerErrorMiddleware, outside this layer, would answer without
the header and re-raise, so that uvicorn logged the traceback again and dropped the
connection. Every log line written while a request runs carries its id (``REQUEST_ID``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.calls import Call, bearer_key_matches, finish, request_id
from service.core.failures import BadRequest, Failure, Forbidden, ShuttingDown, Unauthenticated
from service.core.tracing import OFF, Tracing
from service.core.urgency import priority_header, timeout_header
from service.logs import REQUEST_ID
from service.web.connection import CLIENT_GONE, REQUEST_TASK
from service.web.errors import CLIENT_GONE as CLIENT_GONE_STATUS
from service.web.errors import EdgeError, answer
from service.web.routing import CALL, dialect_of

log = logging.getLogger("service.web.middleware")


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: tuple[str, ...],
        high_priority_keys: tuple[str, ...] = (),
        open_paths: frozenset[str],
        metrics: Any,
        tracing: Tracing = OFF,
    ) -> None:
        self.app = app
        self.tracing = tracing
        self.open_paths = open_paths
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.high_priority_keys = tuple(key.encode() for key in high_priority_keys)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing.on:
            await self._traced(scope, receive, send)
            return
        await self._handle(scope, receive, send)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request inside its server span: a child of the caller's ``traceparent``, named by its route."""
        headers = Headers(scope=scope)
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracing.server_span(f"{scope['method']} {scope['path']}", headers, attributes) as span:
            try:
                await self._handle(scope, receive, send_status)
            finally:
                call = scope.get(CALL)
                route = scope.get("route")
                if route is not None:
                    span.update_name(f"{scope['method']} {route.path}")
                    span.set_attribute("http.route", route.path)
                if status:
                    span.set_attribute("http.response.status_code", status)
                if call is not None:
                    span.set_attribute("request.id", call.request_id)
                    if call.model:
                        span.set_attribute("model", call.model)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        call = scope[CALL] = Call("http", scope["method"], scope["path"], request_id(headers.get("x-request-id")))
        status = 500
        responding = False
        context = REQUEST_ID.set(call.request_id)
        scope[REQUEST_TASK] = asyncio.current_task()  # what the connection cancels if the client leaves

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
                MutableHeaders(scope=message)["x-request-id"] = call.request_id
            await send(message)

        try:
            if not self._authorized(scope["path"], headers):
                await send_error(
                    Unauthenticated("missing or invalid API key; send 'Authorization: Bearer KEY'"), send_with_headers
                )
            elif scope["path"] in self.open_paths or scope["path"].startswith("/docs/"):
                # Probes and scrapes run no model: a deadline or a priority means nothing to them.
                await self.app(scope, receive, send_with_headers)
            elif (refused := self._read_urgency(call, headers)) is not None:
                await send_error(refused, send_with_headers, dialect_of(scope))
            else:
                await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            if scope.get(CLIENT_GONE):  # the connection stopped the work of a departed client
                status = CLIENT_GONE_STATUS
                return
            # uvicorn cancels the requests still running when the drain timeout ends.
            # Answer them, and let the task end: nothing awaits its result.
            if responding:  # too late for a status; uvicorn closes the connection
                raise
            await send_error(ShuttingDown("the server is shutting down; retry the request"), send_with_headers)
        except Exception as exc:
            log.error("unhandled error on %s", scope["path"], exc_info=exc)
            if not responding:  # otherwise uvicorn closes the connection on the unfinished response
                await send_error(Failure("internal error; see the server log"), send_with_headers, dialect_of(scope))
        finally:
            route = scope.get("route")  # the route template, so metrics labels stay few
            finish(call, status, getattr(route, "path", "unmatched"), self.metrics)
            REQUEST_ID.reset(context)

    def _authorized(self, path: str, headers: Headers) -> bool:
        if not self.api_keys or path in self.open_paths or path.startswith("/docs/"):
            return True
        return bearer_key_matches(headers.get("authorization", ""), self.api_keys)

    def _read_urgency(self, call: Call, headers: Headers) -> BadRequest | Forbidden | None:
        """The call's deadline and priority from ``x-request-timeout`` and ``x-priority``; why not, if they are
        bad or the caller may not ask for high priority (HIGH_PRIORITY_KEYS)."""
        if self.high_priority_keys:
            call.may_ask_high = bearer_key_matches(headers.get("authorization", ""), self.high_priority_keys)
        try:
            if (timeout := headers.get("x-request-timeout")) is not None:
                call.deadline = timeout_header(timeout)
            if (priority := headers.get("x-priority")) is not None:
                call.priority = call.ask(priority_header(priority))
        except (BadRequest, Forbidden) as exc:
            return exc
        return None


async def send_error(error: Failure | EdgeError, send: Send, dialect: str = "service") -> None:
    status, body, error_headers = answer(error, dialect)
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
