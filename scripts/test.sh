#!/usr/bin/env bash
# The default test run (CPU): slow and gpu tests excluded, the real-model test included.
set -euo pipefail
BIN=${1:-.venv/bin}
# The default selection, plus the real-model parity test and the vLLM plug-in's tests (slow, yet
# their issues ask CI to run them; the vLLM ones need `make vllm-venv`, which `make test` runs first).
"$BIN/python" -m pytest -q -m "(not slow or real_model or vllm) and not gpu and not multi_gpu" "${@:2}"
