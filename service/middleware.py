"""One pure-ASGI layer around every request: request id, API keys, metrics, access log.

It is also where an unexpected exception ends: logged once, with its traceback and the
request id, and answered with a 500 that carries ``x-request-id`` like every other
response. Starlette's ServerErrorMiddleware, outside this layer, would answer without
the header and re-raise, so that uvicorn logged the traceback again and dropped the
connection. Every log line written while a request runs carries its id (``REQUEST_ID``).

Handlers record the model a request resolved in its scope (``service.registry``);
this layer releases it once the response is out and names it in the request's
metrics and access log line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.endpoints import dialect_of
from service.errors import ClientGone, InternalError, Unauthorized, Unavailable
from service.http import CLIENT_GONE, REQUEST_TASK
from service.logs import REQUEST_ID, log_access
from service.registry import HELD, MODEL, release

log = logging.getLogger("service.app")
# The id of the request being served, for every log line written on its behalf.
_VALID_REQUEST_ID = re.compile(r"^[\w.:/+=-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, *, api_keys: tuple[str, ...], open_paths: frozenset[str], metrics: Any) -> None:
        self.app = app
        self.open_paths = open_paths
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        sent = headers.get("x-request-id", "")
        request_id = sent if _VALID_REQUEST_ID.match(sent) else os.urandom(16).hex()  # as random as uuid4, cheaper
        status = 500
        responding = False
        context = REQUEST_ID.set(request_id)
        scope[REQUEST_TASK] = asyncio.current_task()  # what the protocol cancels if the client leaves

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            if not self._authorized(scope["path"], headers):
                await _send_error(Unauthorized("missing or invalid API key; send 'Authorization: Bearer KEY'",
                                               headers={"WWW-Authenticate": "Bearer"}), send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            if scope.get(CLIENT_GONE):  # the protocol stopped the work of a departed client
                status = ClientGone.status_code
                return
            # uvicorn cancels the requests still running when the drain timeout ends.
            # Answer them, and let the task end: nothing awaits its result.
            if responding:  # too late for a status; uvicorn closes the connection
                raise
            await _send_error(Unavailable("the server is shutting down; retry the request"), send_with_headers)
        except Exception as exc:
            log.error("unhandled error on %s", scope["path"], exc_info=exc)
            if not responding:  # otherwise uvicorn closes the connection on the unfinished response
                await _send_error(InternalError("internal error; see the server log"), send_with_headers,
                                  dialect_of(scope))
        finally:
            held = scope.get(HELD)
            release(scope)  # the response is out: the model's engine may now be retired
            elapsed = time.perf_counter() - started
            endpoint = _endpoint(scope)
            model = scope.get(MODEL, "")
            self.metrics.record_request(endpoint, str(status), model, elapsed)
            fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"],
                      "status": status, "duration_ms": round(elapsed * 1000, 3)}
            if model:
                fields["model"] = model
            if held is not None:
                fields["model_version"] = held.version
            log_access(fields)
            REQUEST_ID.reset(context)

    def _authorized(self, path: str, headers: Headers) -> bool:
        if not self.api_keys or path in self.open_paths or path.startswith("/docs/"):
            return True
        return bearer_key_matches(headers.get("authorization", ""), self.api_keys)


def bearer_key_matches(authorization: str, api_keys: tuple[bytes, ...]) -> bool:
    """Whether an ``Authorization: Bearer KEY`` value names one of the keys (HTTP and gRPC alike)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # Compare against every key, so timing reveals neither the key nor which one matched.
    matches = [hmac.compare_digest(given, key) for key in api_keys]
    return any(matches)


def _endpoint(scope: Scope) -> str:
    """The route template (the router records the matched route), so metrics labels stay few."""
    route = scope.get("route")
    return getattr(route, "path", "unmatched")


async def _send_error(error: Any, send: Send, dialect: str = "service") -> None:
    body = json.dumps(error.body(dialect)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
