"""Closed- and open-loop HTTP load on one server, and what each level measured.

The measuring half of the load tool (bench/loadtest.py is its command line), kept below every
benchmark that loads a server (bench/compare.py, bench/report.py, bench/tracing_cost.py) so they
need not import the command line that, in turn, runs them.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from bench.workload import Mix

EXIT_OK, EXIT_FAILED_REQUESTS = 0, 1


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
    short_p50_ms: float | None = None  # short queries alone, when the mix has other kinds too
    short_p99_ms: float | None = None
    cpu_percent: float | None = None
    peak_rss_mb: float | None = None
    mean_batch_size: float | None = None
    cache_hit_rate: float | None = None
    shadow_share: float | None = None  # of the inputs served, the share a shadow version also ran
    shadow_skipped_share: float | None = None  # ... and the share picked for it but skipped
    windows_per_s: float | None = None  # windows of documents read whole, per second
    document_p50_ms: float | None = None  # whole documents alone, when the mix has them
    document_p99_ms: float | None = None


class ProcessSampler:
    """CPU and peak RSS of the server process (and its children), sampled every 50 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_rss = 0
        # Resident memory less the pages of mapped files (a checkpoint, a graph's external data), which
        # the kernel can drop and read again: what the processes hold that only ending them frees.
        self.peak_private = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _processes(self):
        import psutil

        process = psutil.Process(self.pid)
        return [process, *process.children(recursive=True)]

    def _tree_rss(self) -> tuple[int, int] | None:
        """The resident and private memory of the process and its children now; None once it is gone."""
        import psutil

        try:
            processes = self._processes()
        except psutil.Error:
            return None
        rss = private = 0
        for process in processes:
            try:
                info = process.memory_info()
            except psutil.Error:  # a child that ended between the listing and the reading
                continue
            rss += info.rss
            private += info.rss - info.shared
        return rss, private

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = self._tree_rss()
            if now is None:
                return
            self.peak_rss = max(self.peak_rss, now[0])
            self.peak_private = max(self.peak_private, now[1])
            self._stop.wait(0.05)

    def __enter__(self) -> ProcessSampler:
        if self.pid:
            self._cpu_start = self._cpu_seconds()
            self._thread.start()
        return self

    def _cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._processes())

    def __exit__(self, *exc: object) -> None:
        if self.pid:
            import psutil

            self._stop.set()
            self._thread.join()
            try:
                self.cpu_seconds = self._cpu_seconds() - self._cpu_start
            except psutil.Error:  # the process ended (and was waited for) before the block did
                self.cpu_seconds = float("nan")


_COUNTERS = (
    "classifier_batch_size_sum",
    "classifier_batch_size_count",
    "classifier_cache_hits_total",
    "classifier_cache_misses_total",
    "classifier_shadow_inputs_total",
    "classifier_shadow_skipped_inputs_total",
    "classifier_windows_total",
)


def scrape_counters(url: str, headers: dict[str, str] | None) -> dict[str, float]:
    """The server's /metrics counters the report derives figures from; empty without /metrics.

    Each scrape has its own connection, closed before the load starts: an idle
    keep-alive connection left open would make concurrency 1 two clients to the server.
    """
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            response = client.get("/metrics")
    except httpx.TransportError:
        return {}
    if response.status_code != 200:
        return {}
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        series, _, value = line.partition(" ")
        name = series.partition("{")[0]  # summed over the model label
        if name in _COUNTERS:
            values[name] = values.get(name, 0.0) + float(value)
    return values


def fill_from_counters(result: LevelResult, delta: Mapping[str, float]) -> None:
    ran, skipped = delta.get("classifier_shadow_inputs_total"), delta.get("classifier_shadow_skipped_inputs_total")
    if (ran or skipped) and result.requests:
        result.shadow_share = round((ran or 0) / result.requests, 4)
        result.shadow_skipped_share = round((skipped or 0) / result.requests, 4)
    if delta.get("classifier_batch_size_count"):
        result.mean_batch_size = round(delta["classifier_batch_size_sum"] / delta["classifier_batch_size_count"], 2)
    if delta.get("classifier_windows_total") and result.seconds:
        result.windows_per_s = round(delta["classifier_windows_total"] / result.seconds, 1)
    hits = delta.get("classifier_cache_hits_total", 0)
    lookups = hits + delta.get("classifier_cache_misses_total", 0)
    if lookups:
        result.cache_hit_rate = round(hits / lookups, 3)


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
        if self.reader is None or self.writer is None:
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
            self.reader = self.writer = None


async def _one(connection, mix, started, latencies, statuses) -> None:
    kind, payload = mix.payload()
    try:
        statuses[str(await connection.post(payload))] += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        statuses[type(exc).__name__] += 1
        await connection.close()
    latencies[kind].append((time.perf_counter() - started) * 1000)


async def _closed_loop(url, headers, concurrency, deadline, max_requests, mix, latencies, statuses):
    sent = 0

    async def worker():
        nonlocal sent
        connection = Connection(url, headers)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            await _one(connection, mix, time.perf_counter(), latencies, statuses)
        await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(url, headers, rate, deadline, max_requests, mix, latencies, statuses):
    idle: list[Connection] = []
    tasks = []

    async def send(scheduled: float) -> None:
        connection = idle.pop() if idle else Connection(url, headers)
        await _one(connection, mix, scheduled, latencies, statuses)
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


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99, rounded to 0.01 ms."""
    quantiles = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return round(quantiles[49], 2), round(quantiles[94], 2), round(quantiles[98], 2)


@dataclass
class Samples:
    """What one or more slices of a level measured, before it is summarized; slices add up."""

    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float | None = None  # of the server process, when its pid is known
    peak_rss: int = 0
    counters: Counter[str] = field(default_factory=Counter)  # deltas of the server's /metrics counters

    def add(self, other: Samples) -> None:
        for kind, values in other.latencies.items():
            self.latencies[kind].extend(values)
        self.statuses.update(other.statuses)
        self.seconds += other.seconds
        if other.cpu_seconds is not None:
            self.cpu_seconds = (self.cpu_seconds or 0.0) + other.cpu_seconds
        self.peak_rss = max(self.peak_rss, other.peak_rss)
        self.counters.update(other.counters)


def collect(
    url: str,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    duration: float,
    max_requests: int,
    mix: Mix,
    pid: int | None = None,
    headers: dict[str, str] | None = None,
) -> Samples:
    """Load ``url`` for ``duration`` seconds, closed-loop at ``concurrency`` or open-loop at ``rate``."""
    samples = Samples()
    before = scrape_counters(url, headers)

    async def go() -> None:
        deadline = time.perf_counter() + duration
        args = (url, headers, rate or concurrency, deadline, max_requests, mix, samples.latencies, samples.statuses)
        await (_open_loop if rate else _closed_loop)(*args)

    with ProcessSampler(pid) as sampler:
        started = time.perf_counter()
        asyncio.run(go())
        samples.seconds = time.perf_counter() - started
    after = scrape_counters(url, headers)
    if pid:
        samples.cpu_seconds, samples.peak_rss = sampler.cpu_seconds, sampler.peak_rss
    samples.counters.update({name: after[name] - before[name] for name in before if name in after})
    return samples


def summarize(samples: Samples, *, concurrency: int | None = None, rate: float | None = None) -> LevelResult:
    level = rate or concurrency
    if level is None:
        raise ValueError("summarize needs the level: a concurrency or a rate")
    every = [ms for values in samples.latencies.values() for ms in values]
    p50, p95, p99 = _percentiles(every)
    result = LevelResult(
        mode="open" if rate else "closed",
        level=level,
        requests=len(every),
        seconds=round(samples.seconds, 3),
        throughput=round(len(every) / samples.seconds, 1),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        statuses=dict(samples.statuses),
        errors=sum(n for status, n in samples.statuses.items() if status != "200"),
    )
    if "short" in samples.latencies and len(samples.latencies) > 1:
        result.short_p50_ms, _, result.short_p99_ms = _percentiles(samples.latencies["short"])
    if samples.latencies.get("document"):
        result.document_p50_ms, _, result.document_p99_ms = _percentiles(samples.latencies["document"])
    if samples.cpu_seconds is not None:
        result.cpu_percent = round(100 * samples.cpu_seconds / samples.seconds, 1)
        result.peak_rss_mb = round(samples.peak_rss / 1e6, 1)
    fill_from_counters(result, samples.counters)
    return result


def run_level(url: str, *, concurrency: int | None = None, rate: float | None = None, **options) -> LevelResult:
    return summarize(collect(url, concurrency=concurrency, rate=rate, **options), concurrency=concurrency, rate=rate)


_COLUMNS = (
    ("mode", lambda r: r.mode),
    ("level", lambda r: f"{r.level:g}"),
    ("requests", lambda r: str(r.requests)),
    ("req/s", lambda r: f"{r.throughput:.1f}"),
    ("p50 ms", lambda r: f"{r.p50_ms:.1f}"),
    ("p95 ms", lambda r: f"{r.p95_ms:.1f}"),
    ("p99 ms", lambda r: f"{r.p99_ms:.1f}"),
    ("short p50", lambda r: _opt(r.short_p50_ms, ".1f")),
    ("short p99", lambda r: _opt(r.short_p99_ms, ".1f")),
    ("errors", lambda r: str(r.errors)),
    ("cpu %", lambda r: _opt(r.cpu_percent)),
    ("peak RSS MB", lambda r: _opt(r.peak_rss_mb)),
    ("mean batch", lambda r: _opt(r.mean_batch_size)),
    ("cache hits", lambda r: _opt(r.cache_hit_rate)),
)


def format_table(results: Sequence[LevelResult]) -> str:
    """A plain-text table; columns nobody in ``results`` has a value for are left out."""
    columns = [(name, cell) for name, cell in _COLUMNS if any(cell(r) != "-" for r in results)]
    rows = [tuple(name for name, _ in columns)] + [tuple(cell(r) for _, cell in columns) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def _opt(value: float | None, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def levels_arg(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def exit_code(results: Sequence[LevelResult]) -> int:
    failed = sum(r.errors for r in results)
    if failed:
        print(f"FAILED: {failed} request(s) did not return 200", file=sys.stderr)
        return EXIT_FAILED_REQUESTS
    return EXIT_OK
