"""What a build starts from: recipe validation and model sources (bundled, directory, GGUF, hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.build.models import resolve_model
from pytest_quant.build.recipes import RecipeSpec


def test_recipe_validation() -> None:
    """(An unknown scheme needs compressed-tensors' presets, which import torch: tests/plugin/test_schemes.py.)"""
    with pytest.raises(QuantUsageError, match="group_size"):
        RecipeSpec("W4A16", group_size=0)
    with pytest.raises(QuantUsageError, match="actorder"):
        RecipeSpec("W4A16", actorder="random")
    with pytest.raises(QuantUsageError, match="smoothing_strength applies to SmoothQuant"):
        RecipeSpec("W4A16", smoothing_strength=0.5)
    with pytest.raises(QuantUsageError, match="dampening_frac"):
        RecipeSpec("W4A16", dampening_frac=2)
    with pytest.raises(QuantUsageError, match="algorithm must be one of auto, rtn, gptq"):
        RecipeSpec("W4A16", algorithm="hqq")
    assert RecipeSpec("W4A16", ignore=("re:.*gate.*",)).ignore == ("lm_head", "re:.*gate.*")
    assert RecipeSpec("W8A8", smoothing_strength=0.5).method == "smoothquant+gptq"  # the guide's recipe
    assert RecipeSpec("W4A16", algorithm="smoothquant+gptq", smoothing_strength=0.5).label == "W4A16+smoothquant+gptq"
    assert RecipeSpec("W4A16", kv_cache="fp8").label == "W4A16+kv-fp8" and RecipeSpec("W4A16").label == "W4A16"




def test_model_sources(tmp_path: Path) -> None:
    assert resolve_model("smollm2-135m-instruct").kind == "bundled"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(QuantUsageError, match="unknown model 'smollm3'"):
        resolve_model("smollm3")
    with pytest.raises(QuantUsageError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(QuantUsageError, match="GGUF file .* does not exist"):
        resolve_model(str(tmp_path / "m.gguf"))
    with pytest.raises(QuantUsageError, match="is not a model: it has no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "dir"


def test_hub_model_without_network_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_quant.build.models import materialize
    from pytest_quant.infra.store import Store

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(QuantEnvironmentError, match="not reachable and the model is not in the local cache"):
        materialize(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct"), Store(tmp_path / "s"))


