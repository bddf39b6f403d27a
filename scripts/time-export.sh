#!/usr/bin/env bash
# How long `python -m export` of the built-in default model takes on this machine, from the
# loaded environments to the written bundle (a temporary one), with the CPU's flags that
# decide ONNX Runtime's kernels. The export's own step table (stderr) says where the time went.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
flags="$(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nproc) cores; flags: ${flags:-no AVX2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
TIMEFORMAT="export of the default model: %R s"
time .venv/bin/python -m export --out "$work/bundle"
