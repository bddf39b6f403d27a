#!/usr/bin/env bash
# Size of the slim image above its base, and where the bytes go inside it.
#   BASE_IMAGE=local/python:3.11-bookworm bash scripts/image-size.sh
# Needs bundles/default (python -m export) and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
docker build -q -f Dockerfile.slim --build-arg BASE_IMAGE="$BASE_IMAGE" -t onnx-classifier:size . >/dev/null
image=$(docker image inspect onnx-classifier:size --format '{{.Size}}')
base=$(docker image inspect "$BASE_IMAGE" --format '{{.Size}}')
echo "above base: $(( (image - base) / 1000000 )) MB"
docker run --rm --entrypoint sh onnx-classifier:size -c \
  'du -sm /models/default /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -12'
