#!/usr/bin/env bash
# HTTP load report: ours, the naive FastAPI + ONNX Runtime server, the PyTorch original
# and the in-process floor taking turns in rounds (bench/compare.py), plus the long-text
# and response-cache runs; writes docs/benchmarks/report.md, report.json and report.png.
# Extra arguments go to `python -m bench.loadtest compare` (e.g. --duration 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ ! -f bundles/default/bundle.json ]]; then .venv/bin/python -m export --out bundles/default; fi
exec .venv/bin/python -m bench.loadtest compare --bundle bundles/default "$@"
