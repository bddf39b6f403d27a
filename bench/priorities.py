"""Priorities under load: does a high-priority client keep its latency while low-priority traffic
saturates the server?

One server (ours, the default bundle), three phases of ``--duration`` seconds each, in one run:

- ``alone``: the probe alone: one request (one short query) every ``1/--probe-rate`` seconds,
  sent on time whatever the answers do (an open loop), with ``x-priority: high``;
- ``flood, same priority``: the probe, and ``--flood-clients`` closed-loop clients (in a process of
  their own, so their client work does not slow the probe's) each sending
  8-text batches back to back at the probe's priority: what the probe suffers without priorities;
- ``flood, low priority``: the same flood with ``x-priority: low``.

It prints (and writes with ``--out``) the probe's p50 and p99 in each phase, the flood's inputs per
second, and the p99 ratios to ``alone``.

    .venv/bin/python -m bench.priorities --bundle bundles/default --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.process import free_port, serving
from bench.workload import SHORT_TEXTS

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
FLOOD_BATCH = 8


async def _probe(client: httpx.AsyncClient, rate: float, duration: float) -> tuple[list[float], list[float]]:
    """Each probe's latency, and the part of it the service spent waiting for a batch (``x-queue-time``)."""
    latencies: list[float] = []
    queued: list[float] = []

    async def one(text: str) -> None:
        started = time.perf_counter()
        response = await client.post("/predict", json={"inputs": text}, headers={"x-priority": "high"})
        response.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        queued.append(float(response.headers["x-queue-time"]))

    tasks = []
    start = time.perf_counter()
    for sent in range(int(rate * duration)):
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(SHORT_TEXTS[sent % len(SHORT_TEXTS)])))
    await asyncio.gather(*tasks)
    return latencies, queued


def _flood(url: str, priority: str, clients: int, stop: Any, done: Any) -> None:
    """A process of its own: the flood's clients must not slow the probe's own event loop."""

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        while not stop.is_set():
            texts = [SHORT_TEXTS[(offset + i) % len(SHORT_TEXTS)] for i in range(FLOOD_BATCH)]
            offset += FLOOD_BATCH
            response = await client.post("/predict", json={"inputs": texts}, headers={"x-priority": priority})
            response.raise_for_status()
            with done.get_lock():
                done.value += FLOOD_BATCH

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(client_loop(client, i * FLOOD_BATCH) for i in range(clients)))

    asyncio.run(run())


async def _phase(url: str, flood: str | None, args: argparse.Namespace) -> dict:
    spawn = multiprocessing.get_context("spawn")
    stop, done = spawn.Event(), spawn.Value("q", 0)
    flooding = None
    if flood:
        flooding = spawn.Process(target=_flood, args=(url, flood, args.flood_clients, stop, done))
        flooding.start()
        await asyncio.sleep(2.0)  # the flood's process starts and the queue fills before the probe starts
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        started, before = time.perf_counter(), done.value
        latencies, queued = await _probe(client, args.probe_rate, args.duration)
        flooded = (done.value - before) / (time.perf_counter() - started)
    stop.set()
    if flooding is not None:
        flooding.join(timeout=60)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "probe_requests": len(latencies),
        "probe_p50_ms": round(quantiles[49], 2),
        "probe_p99_ms": round(quantiles[98], 2),
        "probe_queue_p50_ms": round(statistics.median(queued), 2),
        "flood_inputs_per_s": round(flooded, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.priorities", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="high-priority requests a second")
    parser.add_argument("--flood-clients", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    port = free_port()
    command = [str(SERVE_PYTHON if SERVE_PYTHON.exists() else sys.executable), "-m", "service", "--bundle", args.bundle]
    with serving(command + ["--port", str(port), "--max-queue-size", "4096"], port) as server:
        phases = {
            "alone": asyncio.run(_phase(server.url, None, args)),
            "flood, same priority": asyncio.run(_phase(server.url, "high", args)),
            "flood, low priority": asyncio.run(_phase(server.url, "low", args)),
        }
    alone = phases["alone"]["probe_p99_ms"]
    report = {
        "bundle": args.bundle,
        "duration_s": args.duration,
        "probe_rate": args.probe_rate,
        "flood_clients": args.flood_clients,
        "flood_batch": FLOOD_BATCH,
        "phases": phases,
        "p99_vs_alone": {name: round(phase["probe_p99_ms"] / alone, 2) for name, phase in phases.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
