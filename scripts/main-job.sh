#!/usr/bin/env bash
# The main job: set up both environments (first run only), then run the shipped gate suite on the
# bundled SmolLM2-135M-Instruct, W4A16 and W8A8, fast CI profile, vLLM's CPU build as the backend.
# Exits as pytest does: 1, because W4A16 is a real regression on this 135M model (docs/THRESHOLDS.md).
# Extra arguments go to pytest (e.g. --quant-profile guide, --quant-report report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QUANT_VLLM_PYTHON="${QUANT_VLLM_PYTHON:-$PWD/.venvs/vllm/bin/python}"
export QUANT_CACHE_DIR="${QUANT_CACHE_DIR:-$PWD/.quant-cache}"
exec .venvs/quant/bin/python -m pytest --pyargs pytest_quant.suite \
  --quant-profile ci --quant-group-size auto --quant-backend auto \
  --quant-report "${QUANT_REPORT:-quant-report.json}" -q -o log_cli=true --log-cli-level=INFO \
  --log-cli-format "%(asctime)s %(message)s" --log-cli-date-format "%H:%M:%S" "$@"
