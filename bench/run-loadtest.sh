#!/usr/bin/env bash
# HTTP load test, ours vs the PyTorch baseline, back to back:
# writes docs/benchmarks/report.md, report.json and report.png (shown in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ ! -f bundles/default/bundle.json ]]; then .venv/bin/python -m export --out bundles/default; fi
exec .venv/bin/python -m bench.loadtest compare --bundle bundles/default "$@"
