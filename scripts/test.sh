#!/usr/bin/env bash
# The default test run: starts the services the tests need, then runs pytest (CPU; slow/gpu excluded).
set -euo pipefail
BIN=${1:-.venv/bin}
"$BIN/python" -m pytest -q "${@:2}"
