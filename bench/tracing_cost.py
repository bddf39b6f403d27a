"""What tracing costs a request: the same bundle served twice at once, tracing off and on.

Both servers run side by side (ours, the default bundle); the load tool takes turns on
them in ``--rounds`` rounds, at concurrency 1 (the cost on one request's latency) and 32
(the cost on throughput). The traced one exports every span over OTLP/HTTP to a sink in
this process that reads and drops them, as a collector on the same machine would.

    .venv/bin/python -m bench.tracing_cost --bundle bundles/default --duration 5 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.load import run_level
from bench.process import Server, free_port, serving
from bench.workload import Mix

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
LEVELS = (1, 32)


class _Sink(BaseHTTPRequestHandler):
    spans_bytes = 0

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        _Sink.spans_bytes += len(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serving(bundle: str, env: dict[str, str]) -> AbstractContextManager[Server]:
    port = free_port()
    return serving([str(SERVE_PYTHON), "-m", "service", "--bundle", bundle, "--port", str(port)], port, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each slice")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    traced_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"}
    samples: dict[str, dict[int, list]] = {mode: {level: [] for level in LEVELS} for mode in ("off", "on")}
    try:
        with ExitStack() as servers:
            urls = {
                "off": servers.enter_context(_serving(args.bundle, {})).url,
                "on": servers.enter_context(_serving(args.bundle, traced_env)).url,
            }
            for _ in range(args.rounds):
                for level in LEVELS:
                    for mode, url in urls.items():
                        result = run_level(
                            url, concurrency=level, duration=args.duration, max_requests=10**9, mix=Mix()
                        )
                        samples[mode][level].append(result)
    finally:
        sink.shutdown()
    figures: dict[str, dict] = {}
    for mode, levels in samples.items():
        for level, results in levels.items():
            if any(result.errors for result in results):
                print(f"error: {mode} at concurrency {level} had failed requests", file=sys.stderr)
                return 1
            figures.setdefault(mode, {})[str(level)] = {
                "throughput": round(statistics.median(r.throughput for r in results), 1),
                "p50_ms": round(statistics.median(r.p50_ms for r in results), 3),
                "p99_ms": round(statistics.median(r.p99_ms for r in results), 3),
            }
    report = {
        "bundle": args.bundle,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "exported_bytes": _Sink.spans_bytes,
        "figures": figures,
        "p50_cost_ms_at_1": round(figures["on"]["1"]["p50_ms"] - figures["off"]["1"]["p50_ms"], 3),
        "throughput_ratio_at_32": round(figures["on"]["32"]["throughput"] / figures["off"]["32"]["throughput"], 3),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
