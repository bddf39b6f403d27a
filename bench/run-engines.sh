#!/usr/bin/env bash
# The engines side by side on this machine, in one run each: in process (bench/engines.py:
# batch 1 and 32, two batches in flight, fidelity, batch dependence) and over HTTP (the load
# report with ours on the engine ENGINE=auto picks, ours on ONNX Runtime, the naive ONNX Runtime
# server and the PyTorch original, at concurrency 1 and 32, with each engine's in-process floor).
# Writes docs/benchmarks/engines.{md,json} and docs/benchmarks/engines-http/report.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ ! -f bundles/default/bundle.json ]]; then .venv/bin/python -m export --out bundles/default; fi
.venv/bin/python -m bench.engines --bundle bundles/default --out docs/benchmarks
exec .venv/bin/python -m bench.loadtest compare --bundle bundles/default --out docs/benchmarks/engines-http \
  --concurrency 1,32 --long-fraction 0 --cache-size 0 --shadow-fraction 0 --document-fraction 0 \
  --report-command "bash bench/run-engines.sh" "$@"
