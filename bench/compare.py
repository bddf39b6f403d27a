"""Ours against two baselines, back to back on this machine: the load report.

    bash bench/run-loadtest.sh        # everything, into docs/benchmarks/report.{md,json,png}

First the in-process floor (bench/floor.py), with no server running. Then each
server in turn, started fresh, measured and stopped before the next one starts:

- ``ours``: ``python -m service`` with its default settings, response cache off;
- ``naive``: bench/naive_server.py, FastAPI and one ``session.run`` per request;
- ``pytorch``: bench/torch_server.py, the original model (the default model only);
- ``ours-cache``: ours with ``CACHE_SIZE``, for the repeating workload only.

Workloads, each a fresh seeded mix, so every server gets the same texts:

- ``short``: single short queries at each ``--concurrency`` (the main figures);
- ``long-mix``: ``--long-fraction`` of texts cut at the max length, the rest
  short, at ``--mixed-concurrency``; the short queries' p50/p99 kept apart;
- ``repeat``: short queries drawn from ``--distinct`` texts at
  ``--cache-concurrency``, against ours without and with the cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.loadtest import LevelResult, exit_code, levels_arg, measure_levels
from bench.process import wait_ready
from bench.report import Report, ServerRun, machine, markdown, to_json
from bench.workload import Mix

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
SERVERS = ("ours", "naive", "pytorch")


@dataclass(frozen=True)
class Workload:
    name: str
    concurrency: list[int]
    long_fraction: float = 0.0
    distinct: int = 0

    def mix(self) -> Mix:
        return Mix(long_fraction=self.long_fraction, distinct=self.distinct)


def server_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or "ours" not in names:
        raise ValueError(text)
    return names


def add_arguments(parser) -> None:
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--out", default="docs/benchmarks", help="directory for report.md, report.json and report.png")
    parser.add_argument("--servers", type=server_names, default=list(SERVERS),
                        help="comma-separated, ours always included: ours,naive,pytorch")
    parser.add_argument("--concurrency", type=levels_arg, default=[1, 8, 32, 128], help="closed-loop levels, e.g. 1,8,32")
    parser.add_argument("--long-fraction", type=float, default=0.1,
                        help="share of long texts in the long-mix level; 0 skips it")
    parser.add_argument("--mixed-concurrency", type=int, default=32, help="concurrency of the long-mix level")
    parser.add_argument("--cache-size", type=int, default=1024, help="CACHE_SIZE of the labelled cache run; 0 skips it")
    parser.add_argument("--distinct", type=int, default=32, help="distinct texts in the repeating workload")
    parser.add_argument("--cache-concurrency", type=levels_arg, default=[1, 32],
                        help="levels of the repeating workload")


def plan(args) -> list[tuple[str, str, dict[str, str], list[Workload]]]:
    """(name, which server, extra environment, workloads), in the order they run."""
    common = [Workload("short", args.concurrency)]
    if args.long_fraction:
        common.append(Workload("long-mix", [args.mixed_concurrency], long_fraction=args.long_fraction))
    repeat = [Workload("repeat", args.cache_concurrency, distinct=args.distinct)] if args.cache_size else []
    runs = [("ours", "ours", {"CACHE_SIZE": "0"}, common + repeat)]
    runs += [(name, name, {}, common) for name in SERVERS[1:] if name in args.servers]
    if repeat:
        runs.append(("ours-cache", "ours", {"CACHE_SIZE": str(args.cache_size)}, repeat))
    return runs


def _serve_python() -> str:
    return str(SERVE_PYTHON if SERVE_PYTHON.exists() else sys.executable)


def command(server: str, bundle: Path, port: int) -> list[str]:
    return {
        "ours": [_serve_python(), "-m", "service", "--bundle", str(bundle)],
        "naive": [sys.executable, "-m", "bench.naive_server", "--bundle", str(bundle)],
        "pytorch": [sys.executable, "-m", "bench.torch_server"],
        "wire": [_serve_python(), "-m", "bench.wire_floor"],
    }[server] + ["--port", str(port)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def run_server(name: str, server: str, extra_env: dict[str, str], workloads: list[Workload], args) -> ServerRun:
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(command(server, Path(args.bundle), port), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(extra_env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, name=f"{name} server")
        cold = time.perf_counter() - started
        time.sleep(1.0)
        idle = _rss_mb(proc.pid)
        print(f"{name}: ready in {cold:.2f} s, idle RSS {idle:.0f} MB", file=sys.stderr, flush=True)
        results: dict[str, list[LevelResult]] = {}
        for workload in workloads:
            print(f"{name}: {workload.name}", file=sys.stderr, flush=True)
            results[workload.name] = measure_levels(
                url, [{"concurrency": c} for c in workload.concurrency], duration=args.duration,
                max_requests=args.max_requests, mix=workload.mix(), pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return ServerRun(name, round(cold, 2), round(idle, 1), results)


def measure_floor(bundle: Path, duration: float) -> dict[str, float]:
    proc = subprocess.run([_serve_python(), "-m", "bench.floor", "--bundle", str(bundle), "--duration", str(duration)],
                          cwd=ROOT, capture_output=True, text=True, env=_env({}))
    if proc.returncode:
        raise SystemExit(f"error: the in-process floor failed:\n{proc.stderr[-3000:]}")
    floor = json.loads(proc.stdout)
    print(f"in-process: p50 {floor['single_p50_ms']} ms, {floor['batch_texts_per_s']} texts/s in batches",
          file=sys.stderr, flush=True)
    return floor


def _check_pytorch_model(args, manifest: dict) -> None:
    from export.default_model import MODEL_ID

    if "pytorch" in args.servers and manifest["model_id"] != MODEL_ID:
        raise SystemExit(f"error: the PyTorch baseline serves the built-in default model only, and {args.bundle} "
                         f"holds {manifest['model_id']}; pass --servers ours,naive")


def compare(args) -> int:
    bundle = Path(args.bundle)
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"error: no bundle at {bundle}; run 'python -m export' first")
    manifest = json.loads((bundle / "bundle.json").read_text())
    _check_pytorch_model(args, manifest)
    floor = measure_floor(bundle, args.duration)
    wire = run_server("wire", "wire", {}, [Workload("short", [1])], args)
    floor["wire_p50_ms"] = wire.levels[0].p50_ms
    runs = {name: run_server(name, server, env, workloads, args) for name, server, env, workloads in plan(args)}
    report = Report(machine=machine(), manifest=manifest, settings=_settings(args), floor=floor, runs=runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    from bench.plot import plot

    plot(report, out / "report.png")
    print(text)
    return exit_code([level for run in runs.values() for level in run.levels])


def _settings(args) -> dict:
    names = ("duration", "concurrency", "long_fraction", "mixed_concurrency", "cache_size", "distinct",
             "cache_concurrency", "servers")
    return {name: getattr(args, name) for name in names}
