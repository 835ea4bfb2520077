#!/usr/bin/env bash
# Set up qcompile with its test extras in .venv and run the test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m slow   or   ./run_tests.sh -m "slow or not slow"
set -euo pipefail
cd "$(dirname "$0")"
scripts/system_packages.sh
scripts/venv.sh test,torch,tflite
exec .venv/bin/python -m pytest -ra "$@"
