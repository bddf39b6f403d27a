"""Ours vs the PyTorch baseline, back to back on this machine, with ratios and a plot."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.loadtest import LevelResult, exit_code, format_table, measure_levels

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerRun:
    name: str
    cold_start_s: float
    idle_rss_mb: float
    levels: list[LevelResult]

    @property
    def peak_rss_mb(self) -> float:
        return max([self.idle_rss_mb] + [r.peak_rss_mb or 0 for r in self.levels])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def run_server(name: str, command: list[str], port: int, args, mix) -> ServerRun:
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: {name} server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 300:
                raise SystemExit(f"error: {name} server not ready after 300 s")
            time.sleep(0.05)
        cold = time.perf_counter() - started
        time.sleep(1.0)
        idle = _rss_mb(proc.pid)
        print(f"{name}: ready in {cold:.2f} s, idle RSS {idle:.0f} MB", file=sys.stderr, flush=True)
        levels = measure_levels(url, args, mix, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return ServerRun(name, round(cold, 2), round(idle, 1), levels)


def machine() -> str:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores, flags: {', '.join(shown) or 'none of avx2/avx512/vnni'}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b else "-"


def report(ours: ServerRun, base: ServerRun | None, bundle: Path) -> str:
    manifest = json.loads((bundle / "bundle.json").read_text())
    chosen = next(v for v in manifest["verification"]["variants"] if v["variant"] == manifest["variant"])
    lines = [
        "# Benchmark report",
        "",
        f"Machine: {machine()}; load generator on the same machine.",
        f"Bundle: {manifest['model_id']}, variant {manifest['variant']}; top-1 agreement with the original "
        f"model {chosen['agreement']:.2%} on {manifest['verification']['texts']} validation texts "
        f"(100% required where the margin is ≥ 0.1: {chosen['confident_agreement']:.2%}).",
        "",
        "## Ours (ONNX Runtime service)",
        "",
        "```",
        format_table(ours.levels),
        "```",
    ]
    if base:
        lines += ["", "## PyTorch baseline (bench/torch_server.py)", "", "```", format_table(base.levels), "```", "",
                  "## Ratios (ours vs baseline, same run)", "",
                  "| level | throughput | p50 latency | p99 latency |", "| --- | --- | --- | --- |"]
        for o, b in zip(ours.levels, base.levels):
            lines.append(f"| {o.mode} {o.level:g} | {ratio(o.throughput, b.throughput)} higher | "
                         f"{ratio(b.p50_ms, o.p50_ms)} lower | {ratio(b.p99_ms, o.p99_ms)} lower |")
        lines += ["", "| | ours | baseline | ratio |", "| --- | --- | --- | --- |",
                  f"| cold start (process start → ready) | {ours.cold_start_s:.2f} s | {base.cold_start_s:.2f} s | "
                  f"{ratio(base.cold_start_s, ours.cold_start_s)} faster |",
                  f"| idle RSS | {ours.idle_rss_mb:.0f} MB | {base.idle_rss_mb:.0f} MB | {ratio(base.idle_rss_mb, ours.idle_rss_mb)} smaller |",
                  f"| peak RSS | {ours.peak_rss_mb:.0f} MB | {base.peak_rss_mb:.0f} MB | {ratio(base.peak_rss_mb, ours.peak_rss_mb)} smaller |"]
    else:
        lines += ["", f"Cold start {ours.cold_start_s:.2f} s, idle RSS {ours.idle_rss_mb:.0f} MB, "
                      f"peak RSS {ours.peak_rss_mb:.0f} MB."]
    return "\n".join(lines) + "\n"


def plot(ours: ServerRun, base: ServerRun | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run, style in ((ours, "o-"), (base, "s--")):
        if run is None:
            continue
        levels = [r.level for r in run.levels]
        left.plot(levels, [r.throughput for r in run.levels], style, label=run.name)
        for key, alpha in (("p50_ms", 1.0), ("p95_ms", 0.6), ("p99_ms", 0.35)):
            right.plot(levels, [getattr(r, key) for r in run.levels], style, alpha=alpha,
                       label=f"{run.name} {key.split('_')[0]}")
    for axis, title, unit in ((left, "Throughput", "requests/s"), (right, "Latency percentiles", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrency" if ours.levels[0].mode == "closed" else "rate")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(args, mix) -> int:
    bundle = Path(args.bundle)
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"error: no bundle at {bundle}; run 'python -m export' first")
    serve_python = ROOT / ".venv-serve" / "bin" / "python"
    port = _free_port()
    ours = run_server("ours", [str(serve_python if serve_python.exists() else sys.executable), "-m", "service",
                               "--bundle", str(bundle), "--port", str(port)], port, args, mix)
    base = None
    if not args.skip_baseline:
        port = _free_port()
        base = run_server("baseline", [sys.executable, "-m", "bench.torch_server", "--port", str(port)], port, args, mix)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report(ours, base, bundle)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(
        {run.name: {**asdict(run), "peak_rss_mb": run.peak_rss_mb} for run in (ours, base) if run}, indent=2))
    plot(ours, base, out / "report.png")
    print(text)
    return exit_code(ours.levels + (base.levels if base else []))
