"""Several GPUs through the plugin (run on the lent two-GPU machine by scripts/gpu/device.sh multi).

Each test records its measurements in $QUANT_MULTI_OUT/multi.json (wall times, per-GPU peaks, agreement), which
docs/GPU.md tabulates. Skipped on machines with fewer than two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.build.checkpoint import build_checkpoint
from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.build.checks import checkpoint_problems
from pytest_quant.evaluate.fidelity import fidelity
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.session.settings import PROFILES
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.store import Store

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                                  reason="needs two CUDA GPUs")]
MODEL = "smollm2-135m-instruct"
GUIDE = CalibrationSpec("bundled", PROFILES["guide"]["num_samples"], PROFILES["guide"]["max_seq_length"], "auto")
RESULTS = Path(os.environ.get("QUANT_MULTI_OUT", "/tmp")) / "multi.json"


def record(name: str, value: Any) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[name] = value
    RESULTS.write_text(json.dumps(data, indent=2))


def _scaling() -> Any:
    """scripts/gpu/scaling.py as a module: its random models of real architectures and its timing with GPU peaks."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling", Path(__file__).parents[2] / "scripts/gpu/scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scaling = _scaling()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("multi-store"))


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8"])
def test_two_gpu_build_finishes_and_matches_one_gpu(scheme: str, store: Store) -> None:
    recipe = RecipeSpec(scheme, group_size="auto")
    base, _ = materialize(resolve_model(MODEL), store)
    row: dict[str, Any] = {}
    cks = {}
    for gpus in (1, 2):
        ck, seconds, peaks = scaling.measured(lambda: build_checkpoint(MODEL, recipe, GUIDE, store, device="cuda", gpus=gpus,
                                                              timeout=600))
        assert not checkpoint_problems(ck.path, ck.recipe), checkpoint_problems(ck.path, ck.recipe)
        f = fidelity(base, ck.path, store, device="cuda")
        cks[gpus] = ck
        row[f"{gpus}gpu"] = {"seconds": seconds, "peak_mib": peaks, "kl": f["kl"], "top1": f["top1_agreement"]}
        torch.cuda.empty_cache()
    from safetensors.torch import load_file

    one, two = (load_file(str(next(cks[g].path.glob("*.safetensors")))) for g in (1, 2))
    same = {k: bool(torch.equal(one[k], two[k])) for k in one}
    scales = [k for k in one if k.endswith("weight_scale")]
    row["agreement"] = {"tensors_identical": f"{sum(same.values())}/{len(same)}",
                        "max_scale_rel_diff": max(float(((one[k].float() - two[k].float()).abs()
                                                         / one[k].float().abs().clamp_min(1e-12)).max())
                                                  for k in scales)}
    record(f"build {scheme}", row)
    assert row["2gpu"]["kl"] < 0.5 and row["2gpu"]["top1"] > 0.7  # the same bounds as the suite's fidelity gate


def random_model(arch: str, store: Store) -> Path:
    """A random-initialized model of a real architecture (scripts/gpu/scaling.py), kept in $QUANT_SCALING_MODELS."""
    models = Path(os.environ.get("QUANT_SCALING_MODELS", "/tmp/scaling-models"))
    return scaling.make_model(arch, models, materialize(resolve_model(MODEL), store)[0])


def suite(model: Path, eval_gpus: int, report: Path, timeout: float) -> dict[str, Any]:
    """The shipped suite's W4A16 accuracy gate on ``model`` with vLLM on ``eval_gpus`` GPUs: its report row."""
    cmd = [sys.executable, "-m", "pytest", "-p", "pytest_quant.plugin", "-p", "no:cacheprovider", "-q",
           "--pyargs", "pytest_quant.suite", "-k", "test_accuracy", "--quant-model", str(model), "--quant-scheme",
           "W4A16", "--quant-profile", "guide", "--quant-group-size", "auto", "--quant-backend", "vllm",
           "--quant-eval-gpus", str(eval_gpus), "--quant-report", str(report)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode in (0, 1) and report.is_file(), p.stdout[-3000:] + p.stderr[-2000:]
    (row,) = json.loads(report.read_text())["gates"]
    return row


def test_tensor_parallel_gives_the_one_gpu_verdict(store: Store, tmp_path: Path) -> None:
    """``--quant-eval-gpus 2`` (vLLM tensor_parallel_size=2) on a model whose 32 heads divide by 2 (SmolLM2's 9 do
    not): the same verdict as one GPU, item by item nearly the same answers."""
    model = random_model("llama-3.2-1b", store)
    rows = {}
    for gpus in (1, 2):
        start = time.perf_counter()
        rows[gpus] = suite(model, gpus, tmp_path / f"tp{gpus}.json", timeout=300)
        rows[gpus]["wall_seconds"] = round(time.perf_counter() - start, 1)
    items = {g: dict(zip(rows[g]["extra"]["items"]["ids"], zip(rows[g]["extra"]["items"]["quantized"],
                                                                rows[g]["extra"]["items"]["base"]))) for g in rows}
    shared = sorted(set(items[1]) & set(items[2]))
    record("tensor parallel", {
        **{f"tp{g}": {k: rows[g][k] for k in ("verdict", "n", "looks", "quantized", "base", "build_seconds",
                                              "eval_seconds", "wall_seconds")} | {"message": rows[g]["message"]}
           for g in rows},
        "items_compared": len(shared),
        "quantized_items_differing": sum(items[1][i][0] != items[2][i][0] for i in shared),
        "base_items_differing": sum(items[1][i][1] != items[2][i][1] for i in shared)})
    assert rows[1]["verdict"] == rows[2]["verdict"], (rows[1]["message"], rows[2]["message"])


def test_xdist_gives_each_worker_its_own_gpu(tmp_path: Path) -> None:
    """``pytest -n 2`` on two GPUs: each worker builds and evaluates its scheme on its own GPU, against serial."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os, torch\n"
        "def test_gpu(quantized_checkpoint, quant_scheme):\n"
        "    with open(os.environ['PROBE_LOG'], 'a') as f:\n"  # xdist workers' stdout does not reach -s
        "        print(f\"SCHEME {quant_scheme} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
        "devices={torch.cuda.device_count()} uuid={torch.cuda.get_device_properties(0).uuid}\", file=f)\n")
    timings = {}
    for workers in ("serial", "2"):
        log = tmp_path / f"probe-{workers}.log"
        env = {**os.environ, "QUANT_CACHE_DIR": str(tmp_path / f"store-{workers}"), "PROBE_LOG": str(log)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        cmd = [sys.executable, "-m", "pytest", "-p", "pytest_quant.plugin", "-p", "no:cacheprovider", str(probe),
               "--pyargs", "pytest_quant.suite", "-k", "probe or accuracy", "--quant-profile", "ci",
               "--quant-group-size", "auto", "--quant-backend", "vllm", "-s", "-q", "--rootdir", str(tmp_path)]
        if workers != "serial":
            cmd += ["-n", workers, "--dist", "loadgroup"]
        start = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=330)
        timings[workers] = round(time.perf_counter() - start, 1)
        assert p.returncode in (0, 1), p.stdout[-3000:] + p.stderr[-2000:]
        lines = log.read_text().splitlines() if log.exists() else []
        if workers != "serial":
            assert len(lines) == 2, p.stdout[-3000:]
            cards = {line.split("uuid=")[1] for line in lines}  # pci_bus_id is 0 for both H100s of a host
            assert all("devices=1" in line for line in lines), lines
            assert len(cards) == 2, f"the two workers shared a GPU: {lines}"
            timings["workers"] = lines
    timings["ratio"] = round(timings["2"] / timings["serial"], 2)
    record("xdist", timings)
