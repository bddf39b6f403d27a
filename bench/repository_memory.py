"""Memory per extra model: one server on a repository of 1, 2, 3 ... copies of a bundle.

Each step starts ``python -m service --repository DIR`` (the serving environment,
a fresh process) on a repository holding N copies of the bundle under different
names, waits for readiness, sends a few requests to every model (so arenas grow
past warm-up), and reads the process's resident memory (VmRSS) and thread count
from /proc. The difference between steps is what one more model of that kind
costs inside a shared process; one process per model would cost the first figure
every time.

    .venv/bin/python -m bench.repository_memory --bundle bundles/default --models 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.process import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
TEXTS = ["what is my balance", "book a flight to paris for two people next friday", "hello"]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def measure(bundle: Path, count: int, python: Path, threads: int) -> dict[str, float]:
    """RSS (MB) and threads of one server process serving ``count`` copies of ``bundle``."""
    with tempfile.TemporaryDirectory(prefix="repository-memory-") as scratch:
        repository = Path(scratch)
        names = [f"model{i + 1}" for i in range(count)]
        for name in names:
            shutil.copytree(bundle, repository / name)
        port = free_port()
        command = [str(python), "-m", "service", "--repository", str(repository), "--port", str(port)]
        with serving(command + ["--log-level", "warning"], port, env={"INTRA_OP_THREADS": str(threads)}) as server:
            for name in names:
                for _ in range(3):
                    response = httpx.post(f"{server.url}/models/{name}/predict", json={"inputs": TEXTS}, timeout=60)
                    response.raise_for_status()
            status = _status(server.process.pid)
            return {
                "models": count,
                "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                "threads": int(status["Threads"]),
            }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.repository_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--models", type=int, default=3, help="measure 1, 2, ... up to this many models")
    parser.add_argument("--threads", type=int, default=2, help="INTRA_OP_THREADS of the server")
    parser.add_argument("--python", type=Path, default=SERVE_PYTHON, help="interpreter of the serving environment")
    args = parser.parse_args(argv)
    rows = [measure(args.bundle, count, args.python, args.threads) for count in range(1, args.models + 1)]
    size = sum(path.stat().st_size for path in args.bundle.iterdir()) / 1e6
    print(f"bundle {args.bundle} ({size:.1f} MB on disk)", file=sys.stderr)
    print("| models | RSS MB | extra for this model, MB | threads |")
    print("| --- | --- | --- | --- |")
    for previous, row in zip([None, *rows], rows):
        extra = "-" if previous is None else f"{row['rss_mb'] - previous['rss_mb']:.1f}"
        print(f"| {row['models']} | {row['rss_mb']} | {extra} | {row['threads']} |")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
