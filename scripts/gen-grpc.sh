#!/usr/bin/env bash
# Regenerate service/protocols/oip/proto/*_pb2*.py from grpc_predict_v2.proto beside them.
# Development time only: the generated modules are committed, so the service needs
# grpcio and protobuf at run time but never grpcio-tools. grpcio-tools 1.80 bundles
# protoc 31.1, whose code runs on any protobuf runtime from 6.31.1 on (7.x included).
#
# The messages are built in a descriptor pool of their own, not protobuf's default pool:
# tritonclient.grpc and kserve define the same `inference` package in the default pool,
# so with it the service's gRPC code could not share a process with those clients (and
# its servicer could not be tested in process beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${TOOLS:-$(mktemp -d)/venv}"
[[ -x "$TOOLS/bin/python" ]] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet grpcio-tools==1.80.0; }
PROTO=service/protocols/oip/proto/grpc_predict_v2.proto
"$TOOLS/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "$PROTO"
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
  "${PROTO%.proto}_pb2.py"
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile' "${PROTO%.proto}_pb2.py"
