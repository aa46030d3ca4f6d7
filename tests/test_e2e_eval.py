"""Real evaluations of the bundled model and its checkpoints: vLLM's CPU build and transformers."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pytest_quant.build import Checkpoint, build_checkpoint
from pytest_quant.evaluate import EvalRun, evaluate
from pytest_quant.fidelity import fidelity
from pytest_quant.models import materialize, resolve_model
from pytest_quant.recipes import RecipeSpec
from pytest_quant.store import Store

from .conftest import CI_CALIBRATION, MODEL

pytestmark = pytest.mark.slow
RUNS = [EvalRun("quant_facts", limit=40), EvalRun("quant_facts", limit=40, add_bos_token=False),
        EvalRun("quant_arith", limit=10), EvalRun("quant_text", limit=5)]
KERNELS = {"W4A16": "CPUWNA16LinearKernel", "W8A8": "CPUInt8ScaledMMLinearKernel"}


@pytest.fixture(scope="session")
def checkpoints(store: Store) -> dict[str, Checkpoint]:
    return {s: build_checkpoint(MODEL, RecipeSpec(s, group_size="auto"), CI_CALIBRATION, store) for s in KERNELS}


@pytest.fixture(scope="session")
def base(store: Store) -> tuple[Path, dict]:
    path, ident = materialize(resolve_model(MODEL), store)
    return path, {"base": ident}


def target(name: str, base: tuple[Path, dict], checkpoints: dict[str, Checkpoint]) -> tuple[Path, dict]:
    if name == "base":
        return base
    return checkpoints[name].path, {"checkpoint": checkpoints[name].key}


def check_metrics(results: dict) -> None:
    for run, r in results.items():
        for name, m in r.metrics.items():
            if "perplexity" in name:
                assert m["value"] > 1, (run, name, m)
            else:
                assert 0 <= m["value"] <= 1, (run, name, m)
        assert r.n == run.limit


@pytest.mark.parametrize("name", ["base", "W4A16", "W8A8"])
def test_vllm_cpu_evaluates_all_runs_in_one_engine(name: str, base, checkpoints, store, vllm_python) -> None:
    path, ident = target(name, base, checkpoints)
    results = evaluate(path, ident, RUNS, store, backend="vllm", vllm_python=vllm_python, label=name)
    check_metrics(results)
    first = next(iter(results.values()))
    if name in KERNELS:
        assert KERNELS[name] in first.kernels, first.kernels
    assert set(results[RUNS[0]].metrics) == {"acc", "acc_norm"}
    assert set(results[RUNS[2]].metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    # With add_bos_token every prompt starts with exactly one BOS; without, none starts with two.
    assert set(results[RUNS[0]].bos_prefix_counts) <= {"1", "inserted"}
    assert not {"2", "3"} & set(results[RUNS[1]].bos_prefix_counts)
    assert set(results[RUNS[3]].bos_prefix_counts) == {"1"}  # rolling windows: lm-eval's own prefix BOS
    start = time.perf_counter()
    again = evaluate(path, ident, RUNS, store, backend="vllm", vllm_python=vllm_python, label=name)
    assert time.perf_counter() - start < 10, "the result cache must answer without starting vLLM"
    assert all(r.cached for r in again.values())
    assert {r: a.metrics for r, a in again.items()} == {r: a.metrics for r, a in results.items()}


def test_vllm_metrics_are_reproducible(checkpoints, store, vllm_python) -> None:
    ck = checkpoints["W4A16"]
    run = [EvalRun("quant_facts", limit=40)]
    first = evaluate(ck.path, {"checkpoint": ck.key}, run, store, backend="vllm", vllm_python=vllm_python)
    fresh = evaluate(ck.path, {"checkpoint": ck.key}, run, store, backend="vllm", vllm_python=vllm_python, rebuild=True)
    assert not fresh[run[0]].cached
    assert fresh[run[0]].metrics == first[run[0]].metrics


@pytest.mark.parametrize("name", ["base", "W4A16", "W8A8"])
def test_transformers_backend(name: str, base, checkpoints, store) -> None:
    path, ident = target(name, base, checkpoints)
    runs = [EvalRun("quant_facts", limit=40), EvalRun("quant_text", limit=5)]
    results = evaluate(path, ident, runs, store, backend="hf", label=name)
    check_metrics(results)
    assert results[runs[0]].backend == "hf"


def test_fidelity_w8a8_is_closer_to_base_than_w4a16(base, checkpoints, store) -> None:
    f = {s: fidelity(base[0], base[1], ck.path, ck.key, store) for s, ck in checkpoints.items()}
    for v in f.values():
        assert v["kl"] > 0 and 0 < v["top1_agreement"] <= 1 and v["tokens"] > 1000
    assert f["W8A8"]["kl"] < f["W4A16"]["kl"]
    assert f["W8A8"]["top1_agreement"] > f["W4A16"]["top1_agreement"]


def damage(src: Path, dst: Path) -> None:
    """Copy a checkpoint and scramble its weight scales (a broken export that still loads)."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for k, v in tensors.items():
        if k.endswith("weight_scale"):
            tensors[k] = (v.float() * torch.empty(v.shape).uniform_(0.0, 3.0, generator=g)).to(v.dtype)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


GATE_CONFTEST = """
import dataclasses, json, pytest
from pathlib import Path
from pytest_quant.build import Checkpoint

@pytest.fixture(scope="session")
def quantized_checkpoint(quant_session, quant_case):
    ck = quant_session.checkpoint(*quant_case)
    damaged = {damaged!r}
    if not damaged:
        return ck
    return dataclasses.replace(ck, path=Path(damaged), manifest={{**ck.manifest, "key": "damaged-" + ck.key}})
"""
GATE_TESTS = """
import pytest

@pytest.mark.quant_accuracy(task="quant_facts", metric="acc", recovery=0.9, stderr_k=1, limit=60)
def test_accuracy(quantized_checkpoint):
    pass

@pytest.mark.quant_bos(task="quant_facts", metric="acc", max_extra_loss=0.1, limit=60)
def test_bos(quantized_checkpoint):
    pass
"""


@pytest.mark.parametrize("broken", [False, True], ids=["healthy", "damaged"])
def test_accuracy_gate_on_real_checkpoints(broken: bool, pytester: pytest.Pytester, checkpoints, store, tmp_path) -> None:
    damaged = ""
    if broken:
        damage(checkpoints["W4A16"].path, tmp_path / "damaged")
        damaged = str(tmp_path / "damaged")
    pytester.makeconftest(GATE_CONFTEST.format(damaged=damaged))
    pytester.makepyfile(test_gate=GATE_TESTS)
    r = pytester.runpytest_subprocess("--quant-scheme", "W4A16", "--quant-group-size", "auto", "--quant-profile", "ci",
                                      "--quant-backend", "hf", "--quant-cache-dir", str(store.root), "-p", "no:randomly")
    out = r.stdout.str()
    assert "acc with BOS" in out and ", without " in out  # the BOS check reports both values
    if broken:
        r.assert_outcomes(failed=1, passed=1)
        assert "quantization gate failed" in out and "FAILED recovery 0.9 of base" in out
    else:
        r.assert_outcomes(passed=2)
