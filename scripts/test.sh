#!/usr/bin/env bash
# The test command: set up the environments, then run the whole suite with coverage.
#   bash scripts/test.sh                          # the whole suite; fails under 85% coverage
#   bash scripts/test.sh tests/core/test_batcher.py::test_x   # any pytest arguments; no coverage floor
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if (($# == 0)); then
  # The floor is a property of the whole suite: one file or one test covers a sliver of the code.
  set -- --cov-fail-under=85
fi
exec .venv/bin/python -m pytest "$@"
