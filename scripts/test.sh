#!/usr/bin/env bash
# The tests, in tiers by directory (tests/unit, tests/plugin, tests/e2e, tests/gpu). Default: the fast tiers (unit: our
# own logic, no torch; plugin: the plugin through pytester, the bad-input table), on every core (pytest-xdist: 0.67x
# the serial time on 2 cores). --ci: those, then the end-to-end and GPU tiers except the tests marked slow, serially
# (CI runs this after the main job, on its store; two workers' vLLM engines would not fit beside each other in
# 24 GiB). --all: every tier (the slow e2e tests start their own vLLM engines and
# builds: about 1 h more here). GPU tests skip themselves without a CUDA GPU. Needs the environments from
# scripts/setup.sh. Other arguments go to pytest (e.g. -k baseline); exit 0 only when every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."
export QUANT_VLLM_PYTHON="${QUANT_VLLM_PYTHON:-$PWD/.venvs/vllm/bin/python}"
export QUANT_CACHE_DIR="${QUANT_CACHE_DIR:-$PWD/.quant-cache}"
rest=()
case "${1:-}" in
  --ci) rest=(tests/e2e tests/gpu -m "not slow"); shift ;;
  --all) rest=(tests/e2e tests/gpu); shift ;;
esac
status=0 ran=0
run() {  # exit 5 (no test selected, e.g. -k picks only e2e tests) is not a failure of this run
  local code=0
  .venvs/quant/bin/python -m pytest -q -rfEs --durations=15 "$@" || code=$?
  if [ "$code" -eq 5 ]; then return; fi
  ran=1
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; fi
}
run -n auto tests/unit tests/plugin "$@"
if [ ${#rest[@]} -gt 0 ]; then run "${rest[@]}" "$@"; fi
if [ "$ran" -eq 0 ]; then echo "[test] no test selected"; exit 5; fi
exit "$status"
