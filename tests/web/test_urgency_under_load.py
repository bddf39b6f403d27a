"""Deadlines and priorities against a real server with a full queue: a late request is dropped from the queue
with 504, a high-priority one overtakes the backlog, and the backlog itself is served in full."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.conftest import needs_export
from tests.helpers import ServerProcess, require_serve_env

pytestmark = needs_export
FLOOD_REQUESTS = 96
FLOOD_TEXTS = 8


async def queue_depth(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(r'^classifier_queue_depth\{model="classifier"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_deadline_and_priority_under_a_full_queue(default_bundle):
    require_serve_env()
    # The default model one input a batch (a few ms each): a backlog of hundreds of inputs lasts seconds.
    server = ServerProcess(default_bundle, "--max-batch-size", "1")
    server.wait_ready()

    async def run() -> tuple[list[tuple[int, float]], httpx.Response, tuple[httpx.Response, float], str]:
        # Idle connections are dropped well before the server's 5 s keep-alive ends, so that a loaded machine
        # cannot reuse one the server is closing at that moment ("server disconnected without a response").
        limits = httpx.Limits(max_connections=FLOOD_REQUESTS + 8, keepalive_expiry=1)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def flood(index: int) -> tuple[int, float]:
                texts = [f"backlog request {index} text {i}" for i in range(FLOOD_TEXTS)]
                response = await client.post("/predict", json={"inputs": texts}, headers={"x-priority": "low"})
                return response.status_code, time.monotonic()

            floods = [asyncio.create_task(flood(i)) for i in range(FLOOD_REQUESTS)]
            deadline = time.monotonic() + 120  # a hang guard
            while await queue_depth(client) < 200:
                assert time.monotonic() < deadline, "the backlog never built up"
                await asyncio.sleep(0.001)
            # At the backlog's priority, behind it: tokenized at once, it cannot start within its 300 ms.
            headers = {"x-request-timeout": "0.3", "x-priority": "low"}
            late_call = client.post("/predict", json={"inputs": "late"}, headers=headers)

            async def urgent_call() -> tuple[httpx.Response, float]:
                # Its own completion time: the late request's answer comes when its deadline passes, and waiting
                # for both would compare the backlog's end with the late request's timer, not with this one.
                response = await client.post("/predict", json={"inputs": "urgent"}, headers={"x-priority": "high"})
                return response, time.monotonic()

            late, (urgent, urgent_done) = await asyncio.gather(late_call, urgent_call())
            done = await asyncio.gather(*floods)
            metrics = (await client.get("/metrics")).text
            return done, late, (urgent, urgent_done), metrics

    try:
        done, late, (urgent, urgent_done), metrics = asyncio.run(run())
    finally:
        server.stop()
    assert late.status_code == 504
    assert late.json() == {
        "error": "the request's deadline passed while its inputs waited in the queue; none of them ran",
        "error_type": "deadline_exceeded",
    }
    assert 'classifier_deadline_exceeded_total{model="classifier",stage="queue"} 1.0' in metrics
    assert urgent.status_code == 200
    assert [status for status, _ in done] == [200] * FLOOD_REQUESTS  # the backlog is served in full
    assert urgent_done < max(when for _, when in done)  # the high-priority request overtook the backlog
    assert 'classifier_dropped_inputs{model="classifier"} 1.0' in metrics  # the late input, unrun
