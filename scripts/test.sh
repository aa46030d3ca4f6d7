#!/usr/bin/env bash
# The tests. Default: the fast tiers (unit and plugin: our own logic, the plugin through pytester, the bad-input
# table). With --all: every tier, the real end-to-end tests too (builds and vLLM/transformers evaluations on the
# CPU; CI runs this). GPU tests skip themselves without a CUDA GPU. Needs the environments from scripts/setup.sh.
# Other arguments go to pytest (e.g. -k baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
export QUANT_VLLM_PYTHON="${QUANT_VLLM_PYTHON:-$PWD/.venvs/vllm/bin/python}"
export QUANT_CACHE_DIR="${QUANT_CACHE_DIR:-$PWD/.quant-cache}"
tiers=(-m "unit or plugin")
if [ "${1:-}" = "--all" ]; then
  tiers=()
  shift
fi
exec .venvs/quant/bin/python -m pytest tests -q -rfEs --durations=15 "${tiers[@]}" "$@"
