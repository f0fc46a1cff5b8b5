#!/usr/bin/env bash
# The default test run (CPU): slow and gpu tests excluded, the real-model test included.
set -euo pipefail
BIN=${1:-.venv/bin}
# The default selection, plus the real-model parity test (slow, yet the issue asks CI to run it).
"$BIN/python" -m pytest -q -m "(not slow or real_model) and not gpu and not multi_gpu" "${@:2}"
