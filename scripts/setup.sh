#!/usr/bin/env bash
# Create the two virtual environments, reinstalling only when requirements change:
#   .venv        export stage + tests (torch, transformers, optimum-onnx, ...)
#   .venv-serve  the slim service alone (with its optional gRPC service), to prove it
#                needs no torch; test clients such as tritonclient stay out of it
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local dir="$1"; shift
  local stamp
  stamp="$(cat "$@" | sha256sum | cut -c1-16)"
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
    return
  fi
  echo "setting up $dir" >&2
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "${@/#/-r}"
  echo "$stamp" > "$dir/.stamp"
}

ensure_venv .venv-serve requirements-serve.txt requirements-grpc.txt
ensure_venv .venv requirements-export.txt requirements-test.txt
# The default model's head ships with loose dependency pins; it needs nothing
# beyond what requirements-export.txt already holds.
if ! .venv/bin/python -c "import rag_intent_classifier" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps rag-intent-classifier==1.0.7
fi
