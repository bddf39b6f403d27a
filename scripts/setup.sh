#!/usr/bin/env bash
# Create the two virtual environments, reinstalling only when requirements change:
#   .venv        export stage, tests and checks (torch CPU build, transformers, sentence-transformers,
#                ruff, mypy, mkdocs, ...)
#   .venv-serve  the slim service alone (requirements-serve.txt, the optional gRPC service's
#                requirements-grpc.txt, the bulk command's requirements-bulk.txt, tracing's
#                requirements-otel.txt, the OpenVINO engine's requirements-openvino.txt and bundle
#                signatures' requirements-signing.txt), to prove it needs no torch; test clients stay out of it
# .venv also gets requirements-bulk.txt and requirements-ray.txt: the tests run Ray Data locally.
# A second run with unchanged requirement files only compares two checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# ensure_venv DIR REQUIREMENT_FILE... [-- NO_DEPS_REQUIREMENT_FILE...]
ensure_venv() {
  local dir="$1"; shift
  local with_deps=() no_deps=() target=with_deps
  for arg in "$@"; do
    if [[ "$arg" == "--" ]]; then target=no_deps; continue; fi
    if [[ "$target" == with_deps ]]; then with_deps+=("$arg"); else no_deps+=("$arg"); fi
  done
  local stamp
  stamp="$(cat "${with_deps[@]}" "${no_deps[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
    return
  fi
  echo "setup: installing $dir from ${with_deps[*]} ${no_deps[*]} (the first time takes a few minutes)" >&2
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "${with_deps[@]/#/-r}"
  if (( ${#no_deps[@]} )); then
    "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps "${no_deps[@]/#/-r}"
  fi
  echo "$stamp" > "$dir/.stamp"
}

ensure_venv .venv-serve requirements-serve.txt requirements-grpc.txt requirements-bulk.txt requirements-otel.txt \
  requirements-openvino.txt requirements-signing.txt
# requirements-test.txt includes requirements-loadtest.txt; hash it too so a change there reinstalls.
ensure_venv .venv requirements-export.txt requirements-test.txt requirements-loadtest.txt requirements-dev.txt \
  requirements-bulk.txt requirements-ray.txt requirements-otel.txt requirements-openvino.txt requirements-signing.txt \
  -- requirements-default-model.txt
