#!/usr/bin/env bash
# Build a local Debian 12 + Python 3.11 base image (no container registry is reachable
# here) and tag it local/python:3.11-bookworm for Dockerfile.slim's BASE_IMAGE.
set -euo pipefail
TAG="${1:-local/python:3.11-bookworm}"
if docker image inspect "$TAG" >/dev/null 2>&1; then exit 0; fi
MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
tar -C "$ROOTFS" -c . | docker import - local/debian:bookworm-minbase >/dev/null
docker build -q -t "$TAG" -f - . <<'DOCKERFILE' >/dev/null
FROM local/debian:bookworm-minbase
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
