"""A scale-in under load loses no request: two replicas take traffic, one is taken out of the endpoints and
stopped the way Kubernetes stops a pod (its preStop pause, then SIGTERM), and every request is answered."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.conftest import needs_export
from tests.helpers import ServerProcess, metric_value, require_serve_env, until

pytestmark = needs_export
CLIENTS = 8
PRE_STOP_SECONDS = 1.0  # the endpoints controller's head start (deploy/k8s/deployment.yaml waits 5 s)


def test_a_replica_drained_under_load_fails_no_request(tiny_bundle):
    require_serve_env()
    # The leaving replica holds each input up to 3 s for company, so requests are still in flight at SIGTERM.
    staying = ServerProcess(tiny_bundle("bert"))
    leaving = ServerProcess(tiny_bundle("bert"), "--max-wait-ms", "3000", "--drain-timeout", "30")
    staying.wait_ready()
    leaving.wait_ready()
    endpoints = [staying.url, leaving.url]
    outcomes: list[tuple[str, int, float]] = []

    async def client(index: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            sent = index
            while not stop.is_set():
                url = endpoints[sent % len(endpoints)]  # round robin over what the endpoints list holds now
                sent += 1
                try:
                    response = await http.post(url + "/predict", json={"inputs": f"request {sent}"})
                    outcomes.append((url, response.status_code, time.monotonic()))
                except httpx.TransportError as exc:
                    outcomes.append((url, type(exc).__name__, time.monotonic()))  # type: ignore[arg-type]

    async def run() -> float:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(i, stop)) for i in range(CLIENTS)]
        # Half the clients' requests wait in the leaving replica's batching window (the staying one answers at
        # once, so the clients gather there).
        await until(
            lambda: (metric_value(leaving.url, "classifier_admitted_inputs") or 0) >= CLIENTS // 2,
            "half the clients waiting in the leaving replica",
        )
        endpoints.remove(leaving.url)  # out of the Service's endpoints: no new request goes there
        await asyncio.sleep(PRE_STOP_SECONDS)  # the preStop pause, as Kubernetes makes it (not a synchronisation)
        leaving.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # The load goes on until the leaving replica has drained and exited and the staying one answered after it.
        await until(
            lambda: (
                leaving.proc.poll() is not None and any(u == staying.url and w > stopped_at for u, _, w in outcomes)
            ),
            "the leaving replica exited and the staying one answered after",
        )
        stop.set()
        await asyncio.gather(*clients)
        return stopped_at

    try:
        stopped_at = asyncio.run(run())
        assert leaving.proc.wait(timeout=30) == 0
    finally:
        staying.stop()
        leaving.stop()
    failed = [outcome for outcome in outcomes if outcome[1] != 200]
    assert failed == []
    answered_by_leaving = [o for o in outcomes if o[0] == leaving.url]
    assert len(answered_by_leaving) >= CLIENTS // 2
    # Requests the leaving replica answered after its SIGTERM: in flight when it came, drained, not dropped.
    assert any(when > stopped_at for url, _, when in answered_by_leaving)
    assert len([o for o in outcomes if o[0] == staying.url and o[2] > stopped_at]) > 0
