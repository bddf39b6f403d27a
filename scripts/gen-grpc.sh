#!/usr/bin/env bash
# Regenerate service/proto/*_pb2*.py from service/proto/grpc_predict_v2.proto.
# Development time only: the generated modules are committed, so the service needs
# grpcio and protobuf at run time but never grpcio-tools. grpcio-tools 1.80 bundles
# protoc 31.1, whose code runs on any protobuf runtime from 6.31.1 on (7.x included).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${TOOLS:-$(mktemp -d)/venv}"
[[ -x "$TOOLS/bin/python" ]] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet grpcio-tools==1.80.0; }
"$TOOLS/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  service/proto/grpc_predict_v2.proto
