#!/usr/bin/env bash
# Debian packages the tests use, installed only when missing, only as root with apt-get, and with
# at most one 'apt-get update'. Without them the tests that need them skip and say why.
#
#   gcc-aarch64-linux-gnu libc6-dev-arm64-cross   the aarch64 cross toolchain (ARM targets, RPC
#                                                 architecture checks); the link needs the libc one
#   qemu-user-static debootstrap wget             the emulated aarch64 board of the 'board' tests
#   debian-archive-keyring                        (qcompile board qemu-aarch64): debootstrap fetches
#                                                 arm64 Debian with wget and checks it with the keyring
#
# QCOMPILE_BOARD_TESTS=0 leaves the board's packages out (run_tests.sh then skips the board tests).
# --no-install-recommends: qemu-user-static recommends systemd and binfmt-support, which the board
# does not use (it runs qemu explicitly, no binfmt_misc).
set -uo pipefail

toolchain=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
board=(qemu-user-static debootstrap wget debian-archive-keyring)

installed() {  # dpkg's view when there is one, else whether the package's command is on PATH
  if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
    return
  fi
  case "$1" in
    gcc-aarch64-linux-gnu) command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 ;;
    qemu-user-static) command -v qemu-aarch64-static >/dev/null 2>&1 ;;
    debootstrap | wget) command -v "$1" >/dev/null 2>&1 ;;
    *) return 0 ;;  # not checkable without dpkg: assume present
  esac
}

missing_of() {
  local p out=()
  for p in "$@"; do installed "$p" || out+=("$p"); done
  echo "${out[@]:-}"
}

read -r -a need_toolchain <<<"$(missing_of "${toolchain[@]}")"
need_board=()
if [ "${QCOMPILE_BOARD_TESTS:-1}" != "0" ]; then
  read -r -a need_board <<<"$(missing_of "${board[@]}")"
fi
if [ ${#need_toolchain[@]} -eq 0 ] && [ ${#need_board[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing Debian packages: ${need_toolchain[*]} ${need_board[*]}; the tests that need them will skip" \
       "(as root: apt-get install --no-install-recommends ${need_toolchain[*]} ${need_board[*]})" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null; then
  echo "note: apt-get update failed; not installing ${need_toolchain[*]} ${need_board[*]} (those tests will skip)" >&2
  exit 0
fi
# Two installs after the one update: a board package the mirror lacks must not cost the toolchain.
if [ ${#need_toolchain[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need_toolchain[@]}" >/dev/null \
    || echo "note: could not install ${need_toolchain[*]}; ARM cross-compile tests will skip" >&2
fi
if [ ${#need_board[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need_board[@]}" >/dev/null \
    || echo "note: could not install ${need_board[*]}; the board tests will skip" >&2
fi
exit 0
