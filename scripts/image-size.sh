#!/usr/bin/env bash
# Size of the slim image above its base: as is, with gRPC, and with OpenVINO (WITH_OPENVINO=1), and where
# the bytes go.
#   BASE_IMAGE=local/python:3.11-bookworm bash scripts/image-size.sh
# Needs bundles/default (python -m export) and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
base=$(docker image inspect "$BASE_IMAGE" --format '{{.Size}}')
for variant in default grpc openvino; do
  args=(--build-arg BASE_IMAGE="$BASE_IMAGE")
  if [[ "$variant" == grpc ]]; then args+=(--build-arg WITH_GRPC=1); fi
  if [[ "$variant" == openvino ]]; then args+=(--build-arg WITH_OPENVINO=1); fi
  docker build -q -f Dockerfile.slim "${args[@]}" -t "onnx-classifier:size-$variant" . >/dev/null
  image=$(docker image inspect "onnx-classifier:size-$variant" --format '{{.Size}}')
  echo "$variant image, above base: $(( (image - base) / 1000000 )) MB"
done
for variant in default openvino; do
  echo "$variant image, where the bytes go (MB):"
  docker run --rm --entrypoint sh "onnx-classifier:size-$variant" -c \
    'du -sm /models/default/* /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -12'
done
