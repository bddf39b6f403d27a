#!/usr/bin/env bash
# Download the serving wheels into wheels/ so `docker build` needs no index access.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -r requirements-serve.txt -d wheels
