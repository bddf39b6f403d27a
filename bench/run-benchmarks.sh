#!/usr/bin/env bash
# In-process benchmarks (tokenize / session run per variant / predict / torch original).
# Results: bench/results/benchmarks-DATE.json. Compare two runs:
#   .venv/bin/pytest-benchmark compare OLD.json NEW.json --group-by=group
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p bench/results
exec .venv/bin/python -m pytest bench -p no:cacheprovider --no-cov --benchmark-enable \
  --benchmark-group-by=group --benchmark-sort=mean --benchmark-columns=min,median,mean,ops,rounds \
  --benchmark-json="bench/results/benchmarks-$(date +%Y%m%d-%H%M%S).json" "$@"
