#!/usr/bin/env bash
# Debian packages the tests use: the aarch64 cross toolchain (ARM targets, RPC architecture checks).
# Installed only when missing, and only as root with apt-get; otherwise those tests skip and say why.
set -uo pipefail
if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: aarch64-linux-gnu-gcc missing; ARM cross-compile tests will skip (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null \
  || echo "note: could not install the aarch64 cross toolchain; ARM tests will skip" >&2
exit 0
