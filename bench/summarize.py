"""Markdown table of a pytest-benchmark JSON: median ms per variant, input length and batch.

.venv/bin/python -m bench.summarize bench/results/benchmarks-DATE.json > docs/benchmarks/session.md
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

_NAME = re.compile(r"test_(session_run|torch_original)\[(?:(.+)-)?(short|medium|long)-(\d+)\]")


def summarize(data: dict) -> str:
    table: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        match = _NAME.fullmatch(bench["name"])
        if not match:
            continue
        kind, variant, length, batch = match.groups()
        row = "PyTorch original" if kind == "torch_original" else variant
        table[row][(length, int(batch))] = bench["stats"]["median"] * 1000
    columns = [(length, batch) for batch in (1, 32) for length in ("short", "medium", "long")]
    lines = [
        "| median ms | " + " | ".join(f"{length} ×{batch}" for length, batch in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    order = ["fp32", "fp32-optimized", "int8", "int8-selective", "PyTorch original"]
    for row, cells in sorted(table.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99):
        lines.append(f"| {row} | " + " | ".join(f"{cells[c]:.2f}" if c in cells else "-" for c in columns) + " |")
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    lines.append("")
    lines.append(
        f"Machine: {cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} cores; "
        f"Python {info.get('python_version', '?')}. Inputs: short ≈ 12 tokens, medium ≈ 64, long = max length."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.summarize BENCHMARKS.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        print(summarize(json.load(handle)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
