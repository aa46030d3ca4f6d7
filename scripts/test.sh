#!/usr/bin/env bash
# The tests. Default: the fast tiers (unit and plugin: our own logic, the plugin through pytester, the bad-input
# table). --ci: those and the end-to-end tier except the tests marked slow (CI runs this after the main job, on its
# store). --all: every tier (the slow e2e tests start their own vLLM engines and builds: about 1 h more here). GPU
# tests skip themselves without a CUDA GPU. Needs the environments from scripts/setup.sh.
# Other arguments go to pytest (e.g. -k baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
export QUANT_VLLM_PYTHON="${QUANT_VLLM_PYTHON:-$PWD/.venvs/vllm/bin/python}"
export QUANT_CACHE_DIR="${QUANT_CACHE_DIR:-$PWD/.quant-cache}"
tiers=(-m "unit or plugin")
case "${1:-}" in
  --ci) tiers=(-m "not slow"); shift ;;
  --all) tiers=(); shift ;;
esac
exec .venvs/quant/bin/python -m pytest tests -q -rfEs --durations=15 "${tiers[@]}" "$@"
