"""Real evaluations of the bundled model and its checkpoints: vLLM's CPU build and transformers."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pytest_quant.build.checkpoint import Checkpoint, build_checkpoint
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.evaluate.fidelity import fidelity
from pytest_quant.gate.scores import aggregate
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.store import Store

from ..conftest import CI_CALIBRATION, MODEL

RUNS = {EvalRun("quant_facts"): list(range(40)), EvalRun("quant_facts", add_bos_token=False): list(range(40)),
        EvalRun("quant_arith"): list(range(10)), EvalRun("quant_text"): list(range(5))}
KERNELS = {"W4A16": "CPUWNA16LinearKernel", "W8A8": "CPUInt8ScaledMMLinearKernel"}


@pytest.fixture(scope="session")
def checkpoints(store: Store) -> dict[str, Checkpoint]:
    return {s: build_checkpoint(MODEL, RecipeSpec(s, group_size="auto"), CI_CALIBRATION, store) for s in KERNELS}


@pytest.fixture(scope="session")
def base(store: Store) -> Path:
    return materialize(resolve_model(MODEL), store)[0]


def path_of(name: str, base: Path, checkpoints: dict[str, Checkpoint]) -> Path:
    return base if name == "base" else checkpoints[name].path


def check_items(results: dict) -> None:
    for run, r in results.items():
        assert sorted(r.items) == RUNS[run]
        for metric in r.items[RUNS[run][0]]:
            value = aggregate(metric, r.values(metric, RUNS[run]))[0]
            assert value > 1 if "perplexity" in metric else 0 <= value <= 1, (run, metric, value)


@pytest.mark.slow  # an engine per model (142 s to start here); CI's main job evaluates W8A8 and base with vLLM
@pytest.mark.parametrize("name", ["base", "W4A16", "W8A8"])
def test_vllm_cpu_evaluates_all_runs_in_one_engine(name: str, base, checkpoints, store, vllm_python,
                                                   vllm_support) -> None:
    if "error" in vllm_support.get(name, {}):
        pytest.skip(f"vLLM cannot run {name} on this CPU: {vllm_support[name]['error']}")
    path = path_of(name, base, checkpoints)
    results = evaluate(path, RUNS, store, backend="vllm", vllm_python=vllm_python, label=name)
    check_items(results)
    first = next(iter(results.values()))
    if name in KERNELS:
        assert KERNELS[name] in first.kernels, first.kernels
    facts, no_bos, arith, text = RUNS
    assert set(results[facts].items[0]) == {"acc", "acc_norm"}
    assert set(results[arith].items[0]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert len(results[text].items[0]["word_perplexity"]) == 2  # (loglikelihood, words) per document
    # With add_bos_token every prompt starts with exactly one BOS; without, none starts with two.
    assert set(results[facts].bos_prefix_counts) <= {"1", "inserted"}
    assert not {"2", "3"} & set(results[no_bos].bos_prefix_counts)
    assert set(results[text].bos_prefix_counts) == {"1"}  # rolling windows: lm-eval's own prefix BOS
    start = time.perf_counter()
    again = evaluate(path, RUNS, store, backend="vllm", vllm_python=vllm_python, label=name)
    assert time.perf_counter() - start < 10, "the item cache must answer without evaluating"
    assert all(r.cached for r in again.values())
    assert {r: a.items for r, a in again.items()} == {r: a.items for r, a in results.items()}


@pytest.mark.slow
def test_items_do_not_depend_on_which_others_are_evaluated(checkpoints, store, vllm_python, vllm_scheme,
                                                          tmp_path) -> None:
    """5-shot prompts: an item evaluated alone gets the answer it gets among others (few-shot drawn per item)."""
    ck = checkpoints[vllm_scheme]
    run = EvalRun("quant_facts", num_fewshot=5)
    together = evaluate(ck.path, {run: list(range(30))}, store, backend="vllm", vllm_python=vllm_python)[run]
    apart = evaluate(ck.path, {run: list(range(20, 30))}, Store(tmp_path / "fresh"), backend="vllm",
                     vllm_python=vllm_python)[run]
    assert {i: apart.items[i] for i in range(20, 30)} == {i: together.items[i] for i in range(20, 30)}


@pytest.mark.slow
def test_vllm_metrics_are_reproducible(checkpoints, store, vllm_python, vllm_scheme) -> None:
    ck = checkpoints[vllm_scheme]
    run = EvalRun("quant_facts")
    first = evaluate(ck.path, {run: list(range(40))}, store, backend="vllm", vllm_python=vllm_python)[run]
    fresh = evaluate(ck.path, {run: list(range(40))}, store, backend="vllm", vllm_python=vllm_python, rebuild=True)[run]
    assert not fresh.cached and fresh.items == first.items


@pytest.mark.parametrize("name", [pytest.param("base", marks=pytest.mark.slow), "W4A16", "W8A8"])
def test_transformers_backend(name: str, base, checkpoints, store) -> None:
    """lm-eval's hf model on each checkpoint (transformers decompresses compressed-tensors); the base model, a plain
    transformers load, only with --all."""
    path = path_of(name, base, checkpoints)
    runs = {EvalRun("quant_facts"): list(range(40)), EvalRun("quant_text"): list(range(5))}
    results = evaluate(path, runs, store, backend="hf", label=name)
    for run, r in results.items():
        assert sorted(r.items) == runs[run] and r.backend == "hf"
    facts, text = results[EvalRun("quant_facts")], results[EvalRun("quant_text")]
    # four choices: chance is 0.25; every model here measured 0.57-0.72 on 240 items (docs/THRESHOLDS.md)
    assert sum(facts.values("acc", runs[EvalRun("quant_facts")])) / 40 >= 0.4
    for loglikelihood, words in text.values("word_perplexity", runs[EvalRun("quant_text")]):
        assert -50 * words < loglikelihood < 0 and words > 0  # a real text's log-likelihood: below 0, not absurd


def test_fidelity_w8a8_is_closer_to_base_than_w4a16(base, checkpoints, store) -> None:
    f = {s: fidelity(base, ck.path, store) for s, ck in checkpoints.items()}
    for v in f.values():
        assert v["kl"] > 0 and 0 < v["top1_agreement"] <= 1 and v["tokens"] > 1000
        assert len(v["per_prompt_kl"]) == v["prompts"] == 32
    assert f["W8A8"]["kl"] < f["W4A16"]["kl"]
    assert f["W8A8"]["top1_agreement"] > f["W4A16"]["top1_agreement"]


@pytest.mark.slow
def test_results_are_keyed_by_content_not_by_name(base, checkpoints, tmp_path) -> None:
    """A copy of a checkpoint shares its results; the same path holding other weights gets new ones."""
    store = Store(tmp_path / "store")  # its own: the session's store may hold W8A8's results already
    run, ids = EvalRun("quant_facts"), list(range(10))
    copy = tmp_path / "copy"
    shutil.copytree(checkpoints["W4A16"].path, copy)
    assert not evaluate(checkpoints["W4A16"].path, {run: ids}, store, backend="hf")[run].cached
    assert evaluate(copy, {run: ids}, store, backend="hf")[run].cached  # same content, another path
    shutil.rmtree(copy)
    shutil.copytree(checkpoints["W8A8"].path, copy)  # copy2 keeps the files' modification times
    assert not evaluate(copy, {run: ids}, store, backend="hf")[run].cached  # same path, other content
    assert fidelity(base, copy, store)["kl"] != fidelity(base, checkpoints["W4A16"].path, store)["kl"]


def test_another_install_and_a_moved_store_hit_the_same_entries(checkpoints, tmp_path) -> None:
    """Issue 18: a wheel install re-evaluated everything an editable install had stored (keys held data paths).
    Two installs of pytest-quant (this checkout, and a copy installed with pip into another directory) and the
    store moved to another path: the second evaluation is served from the store."""
    import subprocess
    import sys

    other = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(other), str(Path(__file__).resolve().parents[2])], check=True, timeout=300,
                   capture_output=True)
    code = ("import json, sys; from pathlib import Path; import pytest_quant\n"
            "from pytest_quant.evaluate.evaluator import EvalRun, evaluate; from pytest_quant.infra.store import Store\n"
            "run = EvalRun('quant_facts')\n"
            "r = evaluate(Path(sys.argv[1]), {run: list(range(6))}, Store(sys.argv[2]), backend='hf')[run]\n"
            "print(json.dumps([pytest_quant.__file__, r.cached]))")
    store = tmp_path / "store"

    def evaluate_with(pythonpath: str, store_path: Path) -> list:
        env = {**os.environ, "PYTHONPATH": pythonpath}
        out = subprocess.run([sys.executable, "-c", code, str(checkpoints["W4A16"].path), str(store_path)], env=env,
                             capture_output=True, text=True, timeout=600, check=True,
                             cwd=tmp_path).stdout  # not the checkout: `python -c` imports from its directory first
        return json.loads(out.strip().splitlines()[-1])

    first = evaluate_with("", store)
    assert first[1] is False
    second = evaluate_with(str(other), store)
    assert second[0].startswith(str(other)) and second[0] != first[0], (first, second)  # really the other install
    assert second[1] is True, "the other install's evaluation keys differ"
    moved = tmp_path / "moved-store"
    shutil.move(str(store), moved)
    assert evaluate_with("", moved)[1] is True, "a moved store's entries were not found"
