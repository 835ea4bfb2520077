#!/usr/bin/env bash
# Set up qcompile in .venv and run the main job: compile the bundled digits CNN for this CPU
# (fp32 and int8), run its test split, and compare accuracy and latency with ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")"
scripts/venv.sh onnxruntime
exec .venv/bin/qcompile demo "$@"
