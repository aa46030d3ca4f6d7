#!/usr/bin/env bash
# The tests: unit and plugin tests (seconds), then real builds and evaluations (minutes).
# Needs the environments from scripts/setup.sh. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
export QUANT_VLLM_PYTHON="${QUANT_VLLM_PYTHON:-$PWD/.venvs/vllm/bin/python}"
export QUANT_CACHE_DIR="${QUANT_CACHE_DIR:-$PWD/.quant-cache}"
exec .venvs/quant/bin/python -m pytest tests -q -rfEs "$@"
