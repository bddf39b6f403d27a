#!/usr/bin/env bash
# Download wheels into wheels/ so `docker build` needs no index access.
#   scripts/wheelhouse.sh            serving wheels, gRPC, tracing and OpenVINO included (Dockerfile.slim, any WITH_*)
#   scripts/wheelhouse.sh --export   also the export stage's (Dockerfile.export; torch CPU build)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=(-r requirements-serve.txt -r requirements-grpc.txt -r requirements-otel.txt -r requirements-openvino.txt)
if [[ "${1:-}" == "--export" ]]; then
  REQUIREMENTS+=(-r requirements-export.txt -r requirements-loadtest.txt)
fi
download() {
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform linux_x86_64 --platform any -d wheels "$@"
}
download "${REQUIREMENTS[@]}"
if [[ "${1:-}" == "--export" ]]; then
  download --no-deps -r requirements-default-model.txt
fi
