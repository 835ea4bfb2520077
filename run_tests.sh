#!/usr/bin/env bash
# Set up qcompile with its test extras in .venv and run the test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m slow   or   ./run_tests.sh -m "slow or not slow"
#
# Without arguments it then also runs the slow tests (pytest -m slow: the five larger light models of the
# onnx wheel against ONNX Runtime, ~5 min) and the emulated-board tests (pytest -m board tests/test_arm.py):
# the first time, that builds the board (~5 min, ~630 MB download, cached in $QCOMPILE_BOARD_DIR,
# default ${XDG_CACHE_HOME:-~/.cache}/qcompile/boards). They skip, saying why, without root,
# qemu-user-static, debootstrap or the aarch64 toolchain.
#   QCOMPILE_SLOW_TESTS=0              skip the slow tests
#   QCOMPILE_BOARD_TESTS=0             skip the board tests (and their Debian packages)
#   QCOMPILE_BOARD_TESTS_TIMEOUT=SEC   deadline of the whole board run (default 2400 s): then it is
#                                      interrupted (its board server and tracker stopped) and fails
set -euo pipefail
cd "$(dirname "$0")"
scripts/system_packages.sh
scripts/venv.sh test,torch,tflite
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -ra "$@"
fi

status=0
.venv/bin/python -m pytest -ra || status=$?

if [ "${QCOMPILE_SLOW_TESTS:-1}" != "0" ]; then
  echo "== slow tests: larger real models (QCOMPILE_SLOW_TESTS=0 skips them)"
  .venv/bin/python -m pytest -ra -m slow || status=$?
fi

if [ "${QCOMPILE_BOARD_TESTS:-1}" = "0" ]; then
  exit "$status"
fi

echo "== board tests: emulated aarch64 board cached in ${QCOMPILE_BOARD_DIR:-${XDG_CACHE_HOME:-~/.cache}/qcompile/boards}" \
     "(QCOMPILE_BOARD_TESTS=0 skips them)"
# SIGINT first: pytest stops like on Ctrl-C and its fixtures stop the board's server and tracker.
board_status=0
timeout --signal=INT --kill-after=120 "${QCOMPILE_BOARD_TESTS_TIMEOUT:-2400}" \
  .venv/bin/python -m pytest -ra -m board tests/test_arm.py || board_status=$?
if [ "$board_status" = "124" ]; then
  echo "board tests: stopped after ${QCOMPILE_BOARD_TESTS_TIMEOUT:-2400} s (QCOMPILE_BOARD_TESTS_TIMEOUT)" >&2
fi
if [ "$status" = "0" ]; then
  status=$board_status
fi
exit "$status"
