"""service/web/connection.py in-process: uvicorn with the limited protocol on a real socket, short timeouts."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.app import _error
from service.core.failures import Failure
from service.settings import Settings
from service.web.connection import Connections, http_protocol, sole_caller
from service.web.errors import EdgeError
from tests.helpers import free_port, read_response, wait_for


async def echo(request: Request) -> JSONResponse:
    body = b""
    async for chunk in request.stream():
        body += chunk
    return JSONResponse({"bytes": len(body)})


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive"})


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(0.8)
    return JSONResponse({"status": "slow"})


async def alone(request: Request) -> JSONResponse:
    check = sole_caller(request.app.state.settings, request.app.state.connections)
    return JSONResponse({"alone": None if check is None else check()})


@pytest.fixture
def serve():
    running = []

    def start(**limits) -> int:
        app = Starlette(
            routes=[
                Route("/echo", echo, methods=["POST"]),
                Route("/live", live),
                Route("/slow", slow),
                Route("/alone", alone),
            ],
            exception_handlers={Failure: _error, EdgeError: _error},
        )
        settings, connections = Settings(**limits), Connections()
        app.state.settings, app.state.connections = settings, connections
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=http_protocol(settings, connections),
            ws="none",
            lifespan="off",
            log_config=None,
            timeout_keep_alive=60,  # far above every timeout under test, so that it never stands in for one
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        wait_for(lambda: server.started, "the server started")
        return port

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[bytes, float]:
    """Send ``pieces`` (``pause`` apart), then read until the server closes; returns what it sent and when."""
    with socket.create_connection(("127.0.0.1", port), timeout=90) as sock:
        started = time.monotonic()
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received, time.monotonic() - started


def statuses(raw: bytes) -> list[str]:
    # Responses follow each other directly: a JSON body has no line end.
    return [line.decode() for line in re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", raw)]


def error_of(raw: bytes) -> dict:
    return json.loads(raw.rpartition(b"\r\n\r\n")[2])


POST = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
GET = b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize(
    "sent, expected",
    [
        pytest.param(b"", [], id="nothing-sent-closed-silently"),
        pytest.param(b"GET /live HTTP/1.1\r\nHost", ["HTTP/1.1 408 Request Timeout"], id="partial-head-408"),
    ],
)
def test_header_timeout(serve, sent, expected):
    port = serve(header_timeout=0.3)
    raw, elapsed = exchange(port, sent)
    assert statuses(raw) == expected
    # Not before the timeout; the upper bound only tells it from the 60 s keep-alive and socket time-outs.
    assert 0.25 < elapsed < 30


def test_bytes_after_a_response_do_not_keep_the_connection_open(serve):
    """Stray bytes cancel uvicorn's keep-alive timer; the header timer takes over."""
    port = serve(header_timeout=1)
    raw, elapsed = exchange(port, GET, *[b"\r\n"] * 300, pause=0.1)
    assert statuses(raw) == ["HTTP/1.1 200 OK", "HTTP/1.1 408 Request Timeout"]
    assert elapsed < 25  # cut by the header timer, not held open by the 30 s of stray bytes


def test_keep_alive_idle_longer_than_the_header_timeout_is_not_cut(serve):
    port = serve(header_timeout=0.3)
    raw, _ = exchange(port, GET, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), pause=0.6)
    assert statuses(raw) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]


def test_a_stalled_body_gets_the_apps_408(serve):
    port = serve(body_timeout=0.3)
    raw, elapsed = exchange(port, POST + b'Content-Length: 100\r\n\r\n{"a"')
    assert statuses(raw) == ["HTTP/1.1 408 Request Timeout"]
    assert b"connection: close\r\n" in raw
    assert error_of(raw) == {"error": "no request body data received for 0.3 s", "error_type": "request_timeout"}
    assert 0.25 < elapsed < 30  # as in test_header_timeout


def test_the_body_timeout_bounds_gaps_not_the_whole_upload(serve):
    # Gaps a quarter of the timeout (a loaded machine may stretch a pause, not by seconds), the whole upload longer.
    port = serve(body_timeout=2)
    raw, elapsed = exchange(port, POST + b"Content-Length: 10\r\nConnection: close\r\n\r\n", *[b"ab"] * 5, pause=0.5)
    assert statuses(raw) == ["HTTP/1.1 200 OK"]
    assert error_of(raw) == {"bytes": 10}
    assert elapsed > 2


def test_an_unread_body_is_dropped_with_the_connection(serve):
    port = serve(body_timeout=0.3)
    raw, elapsed = exchange(port, b"GET /live HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    assert statuses(raw) == ["HTTP/1.1 200 OK"]
    assert 0.25 < elapsed < 30  # as in test_header_timeout


@pytest.mark.parametrize(
    "padding, expected",
    [
        pytest.param(900, "HTTP/1.1 200 OK", id="under"),
        pytest.param(1100, "HTTP/1.1 431 Request Header Fields Too Large", id="over-complete"),
    ],
)
def test_header_size_limit(serve, padding, expected):
    port = serve(max_header_bytes=1024)
    raw, _ = exchange(
        port, b"GET /live HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * padding + b"\r\nConnection: close\r\n\r\n"
    )
    assert statuses(raw) == [expected]


def test_an_unterminated_header_is_cut_at_the_limit(serve):
    port = serve(max_header_bytes=1024)
    raw, _ = exchange(port, b"GET /live HTTP/1.1\r\nX-Pad: ", *[b"a" * 600] * 4, pause=0.05)
    assert statuses(raw) == ["HTTP/1.1 431 Request Header Fields Too Large"]
    assert error_of(raw) == {
        "error": "request line and headers exceed the limit of 1024 bytes",
        "error_type": "header_too_large",
    }


def test_pipelined_requests_are_all_answered(serve):
    port = serve(body_timeout=0.3, header_timeout=0.3)
    last = POST + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    raw, _ = exchange(port, GET * 3 + last)
    assert statuses(raw) == ["HTTP/1.1 200 OK"] * 4


def test_a_body_waiting_behind_a_pipelined_request_is_not_timed_out(serve):
    """While the server does not read, the client cannot send: its clock starts when reading resumes."""
    port = serve(body_timeout=0.3)
    first = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + POST + b"Content-Length: 4\r\nConnection: close\r\n\r\n{}"
    raw, _ = exchange(port, first, b"  ", pause=1.0)
    assert statuses(raw) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
    assert raw.endswith(b'{"bytes":4}')


def test_a_malformed_request_still_gets_uvicorns_400(serve):
    port = serve()
    raw, _ = exchange(port, b"NOT HTTP\r\n\r\n")
    assert statuses(raw) == ["HTTP/1.1 400 Bad Request"]


def test_connection_cap(serve):
    port = serve(max_connections=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
        held.sendall(GET)
        assert read_response(held).startswith(b"HTTP/1.1 200 OK")
        raw, _ = exchange(port, GET)
    assert statuses(raw) == ["HTTP/1.1 503 Service Unavailable"]
    assert b"retry-after: 1\r\n" in raw
    assert error_of(raw) == {
        "error": "the server is at its limit of 1 connections; retry later",
        "error_type": "unavailable",
    }


def ask_alone(sock: socket.socket) -> bool | None:
    sock.sendall(b"GET /alone HTTP/1.1\r\nHost: t\r\n\r\n")
    return error_of(read_response(sock))["alone"]


@pytest.mark.parametrize(
    "grpc_port, with_one, with_two",
    [
        pytest.param(0, True, False, id="http-only"),
        pytest.param(50051, None, None, id="grpc-shares-the-loop"),  # not started here; the setting alone counts
    ],
)
def test_the_batcher_learns_whether_this_is_the_only_connection(serve, grpc_port, with_one, with_two):
    port = serve(grpc_port=grpc_port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
        assert ask_alone(first) is with_one
        with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
            assert ask_alone(second) is with_two  # answered, so the server has taken the connection
            assert ask_alone(first) is with_two
        wait_for(lambda: ask_alone(first) is with_one, "the server saw the second connection close")
