#!/usr/bin/env bash
# The main job: export the built-in default model if its bundle is missing, then serve it.
# The first run installs two virtual environments (a few minutes) and exports the default
# model (about half a minute on two cores, verifying every quantization choice against the
# original); later runs start serving in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "serve-default: [1/3] checking the virtual environments (.venv, .venv-serve)" >&2
bash scripts/setup.sh
BUNDLE="${BUNDLE:-bundles/default}"
if [[ ! -f "$BUNDLE/bundle.json" ]]; then
  echo "serve-default: [2/3] exporting the default model to $BUNDLE (verifying it against the original)" >&2
  .venv/bin/python -m export --out "$BUNDLE"
else
  echo "serve-default: [2/3] bundle $BUNDLE exists (delete it or run 'python -m export --force' to rebuild)" >&2
fi
echo "serve-default: [3/3] serving $BUNDLE; /health turns 200 when the model is warm" >&2
exec .venv-serve/bin/python -m service --bundle "$BUNDLE" "$@"
