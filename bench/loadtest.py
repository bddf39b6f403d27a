"""HTTP load tool: closed-loop and open-loop load against a running server.

    python -m bench.loadtest run --url http://127.0.0.1:8000 --concurrency 1,8,32,128 --duration 10
    python -m bench.loadtest run --url http://127.0.0.1:8000 --rate 200 --duration 10
    python -m bench.loadtest compare --duration 10        # ours vs both baselines, with a report

It stops by itself (duration and request-count bounds), refuses any target but
loopback or a private (compose) network, and exits 1 if any request failed.
Every answer but 200 counts as failed, 429 included: with the default settings
the admission bound (MAX_QUEUE_SIZE, 1024 inputs) is far above the highest
closed-loop level (128 single-text requests in flight), so a 429 there is a
fault, not load shedding. Latencies are also kept per kind of request, so the
p50/p99 of short queries shows whether long texts in the mix hold them up.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TypedDict
from urllib.parse import urlsplit

from bench.compare import add_arguments, compare
from bench.load import LevelResult, exit_code, format_table, levels_arg, run_level
from bench.workload import Mix


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


class Level(TypedDict, total=False):
    """One level of ``measure_levels``: ``{"concurrency": 8}`` or ``{"rate": 200.0}``, one key only."""

    concurrency: int
    rate: float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="load one running server")
    run.add_argument("--url", default="http://127.0.0.1:8000")
    run.add_argument("--server-pid", type=int, help="PID of the server, to report its CPU and peak RSS")
    run.add_argument("--concurrency", type=levels_arg, default=[1, 8, 32, 128], help="closed-loop levels, e.g. 1,8,32")
    run.add_argument("--rate", type=float, help="open loop: requests per second (instead of --concurrency)")
    run.add_argument("--long-fraction", type=float, default=0.0, help="share of single long texts")
    run.add_argument("--batch-fraction", type=float, default=0.0, help="share of 8-text batch requests")
    run.add_argument("--distinct", type=int, default=0, help="draw short texts from only this many (0: all)")
    run.add_argument("--api-key", help="bearer key, if the server requires one")
    run.add_argument("--json", help="write the results as JSON here")
    add_arguments(sub.add_parser("compare", help="start ours and both baselines back to back and write the report"))
    for p in sub.choices.values():
        p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
        p.add_argument("--max-requests", type=int, default=100_000, help="request bound per level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        return compare(args)
    check_target(args.url)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else None
    mix = Mix(args.long_fraction, args.batch_fraction, args.distinct)
    levels: list[Level] = [{"rate": args.rate}] if args.rate else [{"concurrency": c} for c in args.concurrency]
    results = measure_levels(
        args.url,
        levels,
        duration=args.duration,
        max_requests=args.max_requests,
        mix=mix,
        pid=args.server_pid,
        headers=headers,
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)
    return exit_code(results)


def measure_levels(url: str, levels: Sequence[Level], **options) -> list[LevelResult]:
    """One ``run_level`` per level (``{"concurrency": 8}`` or ``{"rate": 200}``), progress on stderr."""
    results = []
    for level in levels:
        results.append(run_level(url, **level, **options))
        ((kind, value),) = level.items()
        print(
            f"{kind} {value:g}: {results[-1].throughput:.1f} req/s, p50 {results[-1].p50_ms:.1f} ms, "
            f"errors {results[-1].errors}",
            file=sys.stderr,
            flush=True,
        )
    return results


if __name__ == "__main__":
    sys.exit(main())
