#!/usr/bin/env bash
# Runs ON the lent GPU machine (through the device tool), in calls made back to back (the machine stays warm
# about 30 s between calls and keeps /tmp):
#   1. carry [.whl, .gpu]  (part.00 + wheel.sha256):  bash scripts/gpu/device.sh stage
#   2. carry [.gpu]        (part.01):                 bash scripts/gpu/device.sh batching W4A16
#   3. (nothing carried):                             bash scripts/gpu/device.sh batching W8A8
#   4. (nothing carried):                             bash scripts/gpu/device.sh tests
# `batching` installs everything into /tmp/site on first use, then runs benchmarks/batching.py with the guide
# profile (512 x 2048) for the scheme: the bare guide script and the plugin at batch 8, 16, 32.
# `tests` runs the plugin's tests (-m "not slow") and llm-compressor's distributed (torchrun) build path.
set -uo pipefail
phase=${1:?stage, batching SCHEME or tests}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/gpu-parts "$OUT"
[ -d .whl ] && cp .whl/*.whl /tmp/gpu-parts/ 2>/dev/null
[ -d .gpu ] && cp .gpu/part.* .gpu/wheel.sha256 /tmp/gpu-parts/ 2>/dev/null
ls /tmp/gpu-parts
[ "$phase" = stage ] && exit 0

set -e
if [ ! -d /tmp/site ]; then
  (cd /tmp/gpu-parts && cat part.00 part.01 > "$(awk '{print $2}' wheel.sha256)" && sha256sum -c wheel.sha256)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/gpu-parts/*.whl
fi
export PYTHONPATH=/tmp/site QUANT_CACHE_DIR=/tmp/quant-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, llmcompressor; print('torch', torch.__version__, 'transformers', transformers.__version__, 'llmcompressor', llmcompressor.__version__)" | tee -a "$OUT/device.txt"
case "$phase" in
  batching)
    scheme=${2:?scheme}
    python3 benchmarks/batching.py --scheme "$scheme" --profile guide --batches 8,16,32 --store /tmp/quant-cache \
      --out "$OUT/batching-$scheme.json" 2>&1 | grep -v -E "it/s\]|s/it\]|is ignored" | tee "$OUT/batching-$scheme.log" | tail -25
    ;;
  tests)
    SECONDS=0
    python3 -m pytest tests -m "not slow" -q -p no:randomly -rs --junitxml "$OUT/junit-tests.xml" 2>&1 \
      | grep -v "is ignored" | tail -30 | tee "$OUT/tests.log" || true
    echo "[gpu] plugin tests took ${SECONDS}s" | tee -a "$OUT/tests.log"
    SECONDS=0
    timeout 300 python3 - <<'PY' 2>&1 | grep -v -E "is ignored|it/s\]|s/it\]" | tail -20 | tee "$OUT/distributed.log" || true
# llm-compressor's distributed oneshot path (torchrun), on the one GPU there is: W4A16, CI calibration.
from pathlib import Path
from pytest_quant.calibration import CalibrationSpec
from pytest_quant.checks import checkpoint_problems
from pytest_quant.distributed import run_distributed_build
from pytest_quant.models import materialize, resolve_model
from pytest_quant.recipes import RecipeSpec
from pytest_quant.store import Store
base, _ = materialize(resolve_model("smollm2-135m-instruct"), Store("/tmp/quant-cache"))
out = Path("/tmp/dist-out")
out.mkdir(exist_ok=True)
recipe = RecipeSpec("W4A16", group_size=64)
info = run_distributed_build(1, base, recipe, CalibrationSpec("bundled", 64, 512), out, False, print)
print("distributed build", info, "problems:", checkpoint_problems(out, recipe))
PY
    echo "[gpu] distributed (torchrun, 1 GPU) step took ${SECONDS}s" | tee -a "$OUT/distributed.log"
    ;;
esac
