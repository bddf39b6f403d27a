"""HTTP/1.1 over httptools, with limits for slow and oversized clients.

uvicorn's ``HttpToolsProtocol`` times out idle keep-alive connections only, and
httptools accepts a head of any size. This subclass adds, per connection:

- a header timeout, armed when the connection opens (or when the first byte of
  a later request arrives) and cancelled once the head is complete;
- a head size limit, counted as bytes arrive, so an unterminated header cannot
  grow inside the parser;
- a body timeout between chunks: the app's ``receive`` then raises
  ``RequestTimeout``, which the app answers like any other error (408, and the
  connection closes), so a stalled upload holds up a drain no longer than this;
- a connection cap, checked when a request's head is complete;
- a departed client's request stopped: if the connection is lost before the
  response is complete, the request's task is cancelled: the middleware records
  the task under ``REQUEST_TASK``, this layer marks the scope ``CLIENT_GONE``.
  Cancelling reaches the batcher's futures, so the inputs of a departed client
  are dropped before they run, and a request pays nothing for the watch;
- the open connections counted for the core (``Connections.only_one``), so a
  lone client's input may run on the event loop without thread hand-offs.

What this module answers itself (408 for a slow head, 431, 503 over the cap) has
the service's JSON error shape and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.settings import Settings
from service.web.errors import ConnectionLimit, EdgeError, HeaderTooLarge, RequestTimeout, answer

log = logging.getLogger("service.web.connection")
# ": " and CRLF around each header, as sent on the wire.
_HEADER_OVERHEAD = 4
# Scope keys: the task serving the request (set by the middleware), and the mark of a departed client.
REQUEST_TASK = "service.request_task"
CLIENT_GONE = "service.client_gone"


class Connections:
    """The server's open HTTP connections, for the core's question "is this the only caller?"."""

    def __init__(self) -> None:
        self._open: set[Any] | None = None

    def track(self, connections: set[Any]) -> None:
        self._open = connections  # uvicorn's own set of the server's connections, shared by all

    def only_one(self) -> bool:
        return self._open is not None and len(self._open) == 1


def sole_caller(settings: Settings, connections: Connections) -> Callable[[], bool] | None:
    """The check the core may ask before running an input on the event loop, or None when gRPC
    calls share the loop unseen by this layer (then nobody is ever known to be alone)."""
    return None if settings.grpc_port else connections.only_one


def http_protocol(
    settings: Settings, connections: Connections | None = None
) -> Callable[..., LimitedHttpToolsProtocol]:
    """What ``uvicorn.Config(http=...)`` takes; uvicorn calls it once per connection."""
    return partial(LimitedHttpToolsProtocol, settings=settings, connections=connections)


class _Answered(Exception):
    """Raised in a parser callback once a response is written, to stop parsing."""


class _BodyDeadline:
    """The ``receive`` the app sees; once the body timer has fired it raises RequestTimeout."""

    def __init__(self, receive: Callable[[], Awaitable[Any]], timeout: float, on_wait: Callable[[], None]) -> None:
        self._receive = receive
        self._timeout = timeout
        self._on_wait = on_wait
        self.expired = False

    async def __call__(self) -> Any:
        self._on_wait()
        message = await self._receive()
        if self.expired and message["type"] == "http.request":
            raise RequestTimeout(
                f"no request body data received for {self._timeout:g} s", headers={"Connection": "close"}
            )
        return message


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, settings: Settings, connections: Connections | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self._tracker = connections
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_activity = 0.0
        self._deadline: _BodyDeadline | None = None
        self._reading_head = True
        self._head_begun = False
        # Raw bytes catch a head that never ends; parsed bytes catch a large head that
        # arrives complete in one read (the raw count misses a read that also starts the body).
        self._raw_head_bytes = 0
        self._parsed_head_bytes = 0

    # Connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._tracker is not None:
            self._tracker.track(self.connections)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            task: asyncio.Task[None] | None = cycle.scope.get(REQUEST_TASK)  # type: ignore[assignment]
            if task is not None and not task.done():
                cycle.scope[CLIENT_GONE] = True  # type: ignore[literal-required]
                task.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Mirrors HttpToolsProtocol.data_received, which would answer a callback's
        # _Answered with a 400 on top of the response already written.
        if self._reading_head:
            self._raw_head_bytes += len(data)
            # Any byte cancels uvicorn's keep-alive timer, so the head timer takes over.
            self._arm_head_timer()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Answered):
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_head and self._raw_head_bytes > self.settings.max_header_bytes:
            self._answer(self._head_too_large())

    # Parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._parsed_head_bytes = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + _HEADER_OVERHEAD)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._reading_head = False
        limit = self.settings.max_connections
        if len(self.connections) > limit or len(self.tasks) >= limit:
            self._answer(
                ConnectionLimit(
                    f"the server is at its limit of {limit} connections; retry later", headers={"Retry-After": "1"}
                )
            )
            raise _Answered
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:
            # run_asgi looks up cycle.receive when its task first runs, which is after this returns.
            self._deadline = _BodyDeadline(self.cycle.receive, self.settings.body_timeout, self._touch_body)
            self.cycle.receive = self._deadline  # type: ignore[method-assign]
            self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._touch_body()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self._reading_head = True
        self._head_begun = False
        self._raw_head_bytes = 0
        super().on_message_complete()

    # Limits ----------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.settings.max_header_bytes:
            self._answer(self._head_too_large())
            raise _Answered

    def _head_too_large(self) -> HeaderTooLarge:
        return HeaderTooLarge(f"request line and headers exceed the limit of {self.settings.max_header_bytes} bytes")

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.settings.header_timeout, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._head_begun or self._raw_head_bytes:
            self._answer(RequestTimeout(f"request header not received within {self.settings.header_timeout:g} s"))
        else:
            # Nothing was asked, so nothing is answered.
            self.transport.close()

    def _touch_body(self) -> None:
        # A chunk arrived, or the app asks for the next one (reading may just have resumed).
        self._body_activity = self.loop.time()

    def _arm_body_timer(self) -> None:
        self._touch_body()
        self._body_timer = self.loop.call_later(self.settings.body_timeout, self._on_body_timeout)

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        timeout = self.settings.body_timeout
        idle = self.loop.time() - self._body_activity
        cycle, deadline = self.cycle, self._deadline
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The server stopped reading (pipelining, or the app is behind): not the client's delay.
            self._arm_body_timer()
        elif idle < timeout:
            self._body_timer = self.loop.call_later(timeout - idle, self._on_body_timeout)
        elif cycle.response_complete:
            # Answered without reading the body (401, 404, ...); the rest will never be read.
            self.transport.close()
        elif cycle.response_started:
            self._arm_body_timer()
        elif deadline is not None and not deadline.expired:
            deadline.expired = True
            cycle.message_event.set()
            # The app answers 408; one more period without an answer closes the connection.
            self._arm_body_timer()
        else:
            self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _answer(self, error: EdgeError) -> None:
        """Write ``error`` as a complete response, unless another response is under way, then close."""
        self._cancel_timers()
        request_id = uuid.uuid4().hex
        status, body, error_headers = answer(error)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.warning(error.message, extra={"fields": {"request_id": request_id, "status": status, "client": client}})
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            content = json.dumps(body).encode()
            headers = [
                *self.server_state.default_headers,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"x-request-id", request_id.encode()),
                *((name.lower().encode(), value.encode()) for name, value in error_headers.items()),
                (b"connection", b"close"),
            ]
            head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self.transport.write(STATUS_LINE[status] + head + b"\r\n" + content)
        self.transport.close()
