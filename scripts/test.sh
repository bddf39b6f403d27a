#!/usr/bin/env bash
# The test command: set up the environments, then run the whole suite with coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
