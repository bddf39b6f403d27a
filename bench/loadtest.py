"""HTTP load tool: closed-loop and open-loop load against a running server.

    python -m bench.loadtest run --url http://127.0.0.1:8000 --concurrency 1,8,32,128 --duration 10
    python -m bench.loadtest run --url http://127.0.0.1:8000 --rate 200 --duration 10
    python -m bench.loadtest compare --duration 10        # ours vs the PyTorch baseline, with a report

It stops by itself (duration and request-count bounds), refuses any target but
loopback or a private (compose) network, and exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

import httpx

from export.texts import IN_DOMAIN, LONG

SHORT_TEXTS = [t for t in IN_DOMAIN if t]
EXIT_OK, EXIT_FAILED_REQUESTS, EXIT_USAGE = 0, 1, 2


@dataclass
class LevelResult:
    mode: str
    level: float
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: int
    cpu_percent: float | None = None
    peak_rss_mb: float | None = None
    mean_batch_size: float | None = None


@dataclass
class Mix:
    """Share of single long texts and of 8-text batches; the rest are single short queries."""

    long_fraction: float = 0.0
    batch_fraction: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def payload(self) -> dict:
        roll = self.rng.random()
        if roll < self.long_fraction:
            return {"inputs": self.rng.choice(LONG), "top_k": 1}
        if roll < self.long_fraction + self.batch_fraction:
            return {"inputs": self.rng.sample(SHORT_TEXTS, 8), "top_k": 1}
        return {"inputs": self.rng.choice(SHORT_TEXTS), "top_k": 1}


def check_target(url: str) -> None:
    """Only loopback or private addresses: this tool must never load someone else's server."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise SystemExit(f"error: cannot resolve {host!r}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_private):
            raise SystemExit(f"error: refusing to load {host} ({address}): only loopback or private networks")


class ProcessSampler:
    """CPU and peak RSS of the server process (and its children), sampled every 50 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _processes(self):
        import psutil

        process = psutil.Process(self.pid)
        return [process, *process.children(recursive=True)]

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, sum(p.memory_info().rss for p in self._processes()))
            except psutil.Error:
                return
            self._stop.wait(0.05)

    def __enter__(self) -> ProcessSampler:
        if self.pid:
            self._cpu_start = self._cpu_seconds()
            self._wall_start = time.perf_counter()
            self._thread.start()
        return self

    def _cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._processes())

    def __exit__(self, *exc: object) -> None:
        if self.pid:
            self._stop.set()
            self._thread.join()
            wall = time.perf_counter() - self._wall_start
            self.cpu_percent = 100 * (self._cpu_seconds() - self._cpu_start) / wall

    def fill(self, result: LevelResult) -> None:
        if self.pid:
            result.cpu_percent = round(self.cpu_percent, 1)
            result.peak_rss_mb = round(self.peak_rss / 1e6, 1)


def batch_totals(client: httpx.Client) -> tuple[float, float] | None:
    """(sum, count) of the server's batch-size histogram, or None without /metrics."""
    try:
        response = client.get("/metrics")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    values = {}
    for line in response.text.splitlines():
        for name in ("classifier_batch_size_sum", "classifier_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    if len(values) != 2:
        return None
    return values["classifier_batch_size_sum"], values["classifier_batch_size_count"]


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams.

    A full HTTP client costs more CPU per request than the server under test;
    on a shared 2-core machine that would measure the client, not the server.
    """

    def __init__(self, url: str, headers: dict[str, str] | None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.head = f"POST /predict HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n{extra}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: dict) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(f"{self.head}content-length: {len(body)}\r\n\r\n".encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        if b"connection: close" in header.lower():
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _one(connection, payload, started, latencies, statuses) -> None:
    try:
        statuses[str(await connection.post(payload))] += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        statuses[type(exc).__name__] += 1
        await connection.close()
    latencies.append((time.perf_counter() - started) * 1000)


async def _closed_loop(url, headers, concurrency, deadline, max_requests, mix, latencies, statuses):
    sent = 0

    async def worker():
        nonlocal sent
        connection = Connection(url, headers)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            await _one(connection, mix.payload(), time.perf_counter(), latencies, statuses)
        await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(url, headers, rate, deadline, max_requests, mix, latencies, statuses):
    idle: list[Connection] = []
    tasks = []

    async def send(scheduled: float) -> None:
        connection = idle.pop() if idle else Connection(url, headers)
        await _one(connection, mix.payload(), scheduled, latencies, statuses)
        idle.append(connection)

    start = time.perf_counter()
    for index in range(max_requests):
        # Latency counts from the scheduled send time, so a slow server cannot hide its queue.
        scheduled = start + index / rate
        if scheduled >= deadline:
            break
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(send(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        await connection.close()


def run_level(
    url: str, *, concurrency: int | None = None, rate: float | None = None, duration: float, max_requests: int,
    mix: Mix, pid: int | None = None, headers: dict[str, str] | None = None,
) -> LevelResult:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30, headers=headers) as sync_client:
        before = batch_totals(sync_client)

        async def go() -> None:
            deadline = time.perf_counter() + duration
            if rate:
                await _open_loop(url, headers, rate, deadline, max_requests, mix, latencies, statuses)
            else:
                await _closed_loop(url, headers, concurrency, deadline, max_requests, mix, latencies, statuses)

        with ProcessSampler(pid) as sampler:
            started = time.perf_counter()
            asyncio.run(go())
            seconds = time.perf_counter() - started
        after = batch_totals(sync_client)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    result = LevelResult(
        mode="open" if rate else "closed",
        level=rate or concurrency,
        requests=len(latencies),
        seconds=round(seconds, 3),
        throughput=round(len(latencies) / seconds, 1),
        p50_ms=round(quantiles[49], 2),
        p95_ms=round(quantiles[94], 2),
        p99_ms=round(quantiles[98], 2),
        statuses=dict(statuses),
        errors=sum(n for status, n in statuses.items() if status != "200"),
    )
    sampler.fill(result)
    if before and after and after[1] > before[1]:
        result.mean_batch_size = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    return result


def format_table(results: Sequence[LevelResult]) -> str:
    rows = [("mode", "level", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "cpu %", "peak RSS MB", "mean batch")]
    for r in results:
        rows.append((r.mode, f"{r.level:g}", str(r.requests), f"{r.throughput:.1f}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}",
                     f"{r.p99_ms:.1f}", str(r.errors), _opt(r.cpu_percent), _opt(r.peak_rss_mb), _opt(r.mean_batch_size)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="load one running server")
    run.add_argument("--url", default="http://127.0.0.1:8000")
    run.add_argument("--server-pid", type=int, help="PID of the server, to report its CPU and peak RSS")
    compare = sub.add_parser("compare", help="start ours and the PyTorch baseline back to back and report ratios")
    compare.add_argument("--bundle", default="bundles/default")
    compare.add_argument("--out", default="docs/benchmarks", help="directory for report.md, report.json and report.png")
    compare.add_argument("--skip-baseline", action="store_true", help="only measure our server")
    for p in (run, compare):
        p.add_argument("--concurrency", type=_levels, default=[1, 8, 32, 128], help="closed-loop levels, e.g. 1,8,32")
        p.add_argument("--rate", type=float, help="open loop: requests per second (instead of --concurrency)")
        p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
        p.add_argument("--max-requests", type=int, default=100_000, help="request bound per level")
        p.add_argument("--long-fraction", type=float, default=0.0, help="share of single long texts")
        p.add_argument("--batch-fraction", type=float, default=0.0, help="share of 8-text batch requests")
        p.add_argument("--api-key", help="bearer key, if the server requires one")
        p.add_argument("--json", help="write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mix = Mix(args.long_fraction, args.batch_fraction)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else None
    if args.command == "compare":
        from bench.compare import compare

        return compare(args, mix)
    check_target(args.url)
    results = measure_levels(args.url, args, mix, args.server_pid, headers)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)
    return exit_code(results)


def measure_levels(url, args, mix, pid, headers=None) -> list[LevelResult]:
    levels = [("rate", args.rate)] if args.rate else [("concurrency", c) for c in args.concurrency]
    results = []
    for kind, level in levels:
        results.append(run_level(url, duration=args.duration, max_requests=args.max_requests, mix=mix, pid=pid,
                                 headers=headers, **{kind: level}))
        print(f"{kind} {level:g}: {results[-1].throughput:.1f} req/s, p50 {results[-1].p50_ms:.1f} ms, "
              f"errors {results[-1].errors}", file=sys.stderr, flush=True)
    return results


def exit_code(results: Sequence[LevelResult]) -> int:
    failed = sum(r.errors for r in results)
    if failed:
        print(f"FAILED: {failed} request(s) did not return 200", file=sys.stderr)
        return EXIT_FAILED_REQUESTS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
