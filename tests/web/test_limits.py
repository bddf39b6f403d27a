"""Slow, stalled and oversized clients, the connection cap and drain overflow, on a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import needs_export
from tests.helpers import ServerProcess, metric_value, read_response, require_serve_env, wait_for

pytestmark = needs_export


@pytest.fixture(autouse=True)
def serving_environment():
    require_serve_env()


@pytest.fixture
def server(tiny_server):
    return tiny_server


@dataclass
class Raw:
    status_line: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def connect(process: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", process.port), timeout=60)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes; b"" if it closed (or reset) without a word."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse(raw: bytes) -> Raw:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return Raw(status_line, headers, body)


def assert_error(raw: bytes, status_line: str, error_type: str, message: str) -> None:
    response = parse(raw)
    assert response.status_line == status_line
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert len(response.headers["x-request-id"]) == 32
    assert response.json() == {"error": message, "error_type": error_type}


HEAD = "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


def test_a_slow_header_gets_408_and_a_close_within_the_header_timeout(server):
    process = server("--header-timeout", "1")
    with connect(process) as sock:
        sock.sendall(HEAD.encode())  # no blank line: the head never ends
        started = time.monotonic()
        raw = read_until_closed(sock)
        elapsed = time.monotonic() - started
    # Not before the timeout; the upper bound only tells the timer from the socket's own 60 s time-out.
    assert 0.8 < elapsed < 30
    assert_error(raw, "HTTP/1.1 408 Request Timeout", "request_timeout", "request header not received within 1 s")


def test_a_stalled_body_gets_408_and_a_close_within_the_body_timeout(server):
    process = server("--body-timeout", "1")
    with connect(process) as sock:
        sock.sendall(f'{HEAD}Content-Length: 1000\r\n\r\n{{"inputs": '.encode())
        started = time.monotonic()
        raw = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 30  # as above
    assert_error(raw, "HTTP/1.1 408 Request Timeout", "request_timeout", "no request body data received for 1 s")
    log = process.log_with('"status": 408')
    assert '"status": 408' in log and "Traceback" not in log


@pytest.mark.parametrize(
    "size, terminated",
    [
        pytest.param(40_000, True, id="complete-40kB"),
        pytest.param(4 * 1024 * 1024, False, id="unterminated-4MiB"),
    ],
)
def test_an_oversized_header_gets_431_or_a_close(server, size, terminated):
    process = server()  # the default limit, 32768 bytes
    head = f"{HEAD}X-Padding: {'a' * size}" + ("\r\nContent-Length: 2\r\n\r\n{}" if terminated else "")
    with connect(process) as sock:
        started = time.monotonic()
        try:
            sock.sendall(head.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: that is the point
        raw = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert elapsed < 30  # the server closed the connection: it did not wait for the socket's time-out
    # A client still sending when the server closes may see a reset instead of the answer.
    if terminated or raw:
        assert_error(
            raw,
            "HTTP/1.1 431 Request Header Fields Too Large",
            "header_too_large",
            "request line and headers exceed the limit of 32768 bytes",
        )
    # The server is unharmed.
    assert httpx.get(process.url + "/live").status_code == 200


def test_a_header_just_under_the_limit_is_served(server):
    process = server("--max-header-bytes", "4096")
    response = httpx.get(process.url + "/live", headers={"x-padding": "a" * 3500})
    assert response.status_code == 200
    refused = httpx.get(process.url + "/live", headers={"x-padding": "a" * 5000})
    assert refused.status_code == 431
    assert refused.json()["error_type"] == "header_too_large"


def test_connections_over_the_cap_get_503(server):
    process = server("--max-connections", "2")
    held = [connect(process) for _ in range(2)]
    try:
        for sock in held:  # one request each, so the server has surely accepted both
            sock.sendall(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 OK")
        with connect(process) as third:
            third.sendall(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n")
            raw = read_until_closed(third)
        response = parse(raw)
        assert response.status_line == "HTTP/1.1 503 Service Unavailable"
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "error": "the server is at its limit of 2 connections; retry later",
            "error_type": "unavailable",
        }
    finally:
        held.pop().close()
    # A freed slot is usable again, once the server has seen the close.
    wait_for(lambda: httpx.get(process.url + "/live").status_code == 200, "a freed connection slot")
    held[0].close()


def test_sigterm_with_a_stalled_upload_exits_within_the_body_timeout(server):
    # The drain would wait up to 300 s: a stalled upload ends it at its body timeout instead.
    process = server("--body-timeout", "2", "--drain-timeout", "300")
    with connect(process) as sock:
        sock.sendall(f'{HEAD}Content-Length: 1000\r\n\r\n{{"inputs": '.encode())
        # Its bytes were in before this connection opened: once /live answers, the event loop has read the head.
        assert httpx.get(process.url + "/live").status_code == 200
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=240) == 0
        elapsed = time.monotonic() - started
        raw = read_until_closed(sock)
    assert elapsed < 120
    assert parse(raw).status_line == "HTTP/1.1 408 Request Timeout"


def test_requests_still_running_when_the_drain_ends_get_503_unavailable(server):
    # A ten-minute batching window keeps the requests queued past a 1 s drain.
    process = server("--max-wait-ms", "600000", "--max-batch-size", "1000", "--drain-timeout", "1")

    async def run():
        async with httpx.AsyncClient(base_url=process.url, timeout=120) as client:
            calls = [asyncio.create_task(client.post("/predict", json={"inputs": f"text {i}"})) for i in range(8)]
            while metric_value(process.url, "classifier_admitted_inputs") != 8:  # all eight queued
                await asyncio.sleep(0.01)
            process.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [503] * 8
    for response in responses:
        assert response.json() == {
            "error": "the server is shutting down; retry the request",
            "error_type": "unavailable",
        }
        assert response.headers["x-request-id"]
    assert process.proc.wait(timeout=30) == 0
    assert "Traceback" not in process.log.read_text()
