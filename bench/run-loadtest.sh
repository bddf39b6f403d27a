#!/usr/bin/env bash
# HTTP load report: the in-process floor, then ours, the naive FastAPI + ONNX Runtime
# server and the PyTorch original back to back, plus the long-text and response-cache
# runs; writes docs/benchmarks/report.md, report.json and report.png.
# Extra arguments go to `python -m bench.loadtest compare` (e.g. --duration 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ ! -f bundles/default/bundle.json ]]; then .venv/bin/python -m export --out bundles/default; fi
exec .venv/bin/python -m bench.loadtest compare --bundle bundles/default "$@"
