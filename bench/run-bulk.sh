#!/usr/bin/env bash
# Bulk scoring benchmark (bench/bulk.py): the in-process floor, the bulk command, our service,
# the PyTorch original and Ray Data on the same texts; writes docs/benchmarks/bulk.json and bulk.md.
# Extra arguments go to `python -m bench.bulk` (e.g. --rows 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ ! -f bundles/default/bundle.json ]]; then .venv/bin/python -m export --out bundles/default; fi
exec .venv/bin/python -m bench.bulk --bundle bundles/default "$@"
