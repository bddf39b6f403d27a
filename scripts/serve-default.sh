#!/usr/bin/env bash
# The main job: export the built-in default model if its bundle is missing, then serve it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUNDLE="${BUNDLE:-bundles/default}"
if [[ ! -f "$BUNDLE/bundle.json" ]]; then
  .venv/bin/python -m export --out "$BUNDLE"
fi
exec .venv-serve/bin/python -m service --bundle "$BUNDLE" "$@"
