"""Schemes as data: compressed-tensors' presets as choices, checkpoints from elsewhere named by the preset they match,
structure checks from the config, and the build's group or block size resolved against the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.build.checks import checkpoint_recipe, checkpoint_scheme, describe_config
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.build.schemes import get_scheme, names, needs_data, presets
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.infra.store import Store

ISSUE_LIST = ("W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "NVFP4",
              "MXFP4A16", "W4AFP8")


def test_every_preset_compressed_tensors_ships_is_a_choice() -> None:
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    assert set(ISSUE_LIST) <= set(names())
    assert set(names()) == {n for n, p in PRESET_SCHEMES.items() if p.get("weights") is not None}
    with pytest.raises(QuantUsageError, match=r"unknown scheme 'W3A3'; choose one of W4A16, W8A16, W8A8, .*FP8"):
        RecipeSpec("W3A3")
    assert {n: presets()[n].format for n in ("W4A16", "W8A8", "FP8_DYNAMIC", "NVFP4")} == {
        "W4A16": "pack-quantized", "W8A8": "int-quantized", "FP8_DYNAMIC": "float-quantized",
        "NVFP4": "nvfp4-pack-quantized"}


def test_data_free_schemes_need_no_calibration() -> None:
    assert not needs_data("FP8_DYNAMIC", "rtn", None) and not needs_data("NVFP4A16", "rtn", None)
    assert not needs_data("FP8_BLOCK", "rtn", None) and not needs_data("W4AFP8", "rtn", None)
    assert needs_data("FP8", "rtn", None)  # static activation scales
    assert needs_data("NVFP4", "rtn", None)  # its activations' global scale
    assert needs_data("W4A16", "gptq", None) and needs_data("FP8_DYNAMIC", "rtn", "fp8")


def test_the_guides_recipes_are_the_presets_at_their_group_size() -> None:
    """The W4A16 config group the guides' GPTQ recipe quantizes with is compressed-tensors' preset at group 64: the
    same arguments as the hand-written dict of before."""
    from compressed_tensors.quantization import QuantizationArgs

    w = RecipeSpec("W4A16", group_size=64).definition().config_group()["weights"]
    assert QuantizationArgs(**w) == QuantizationArgs(num_bits=4, type="int", symmetric=True, dynamic=False,
                                                     strategy="group", group_size=64)
    w8 = RecipeSpec("W8A8").definition().config_group()
    assert QuantizationArgs(**w8["input_activations"]) == QuantizationArgs(num_bits=8, type="int", symmetric=True,
                                                                           dynamic=True, strategy="token")


def _checkpoint(tmp_path: Path, name: str, group: dict | None = None, **config) -> Path:
    path = tmp_path / name
    path.mkdir()
    q = {"quant_method": "compressed-tensors", "format": "x", "ignore": ["lm_head"],
         "config_groups": {"group_0": group}} if group is not None else {}
    (path / "config.json").write_text(json.dumps({"quantization_config": {**q, **config}}))
    return path


@pytest.mark.parametrize("preset", ["W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "W4AFP8"])
def test_a_checkpoint_is_named_by_the_preset_its_config_matches(tmp_path: Path, preset: str) -> None:
    group = get_scheme(preset).with_group(64).config_group() if get_scheme(preset).group_size and not \
        get_scheme(preset).group_fixed else get_scheme(preset).config_group()
    path = _checkpoint(tmp_path, preset, group)
    assert checkpoint_scheme(path) == preset
    recipe = checkpoint_recipe(path)
    assert recipe is not None and recipe.scheme == preset


def test_asymmetric_int4_is_not_w4a16_and_an_unknown_shape_is_custom(tmp_path: Path) -> None:
    asym = _checkpoint(tmp_path, "asym", {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}})
    assert checkpoint_scheme(asym) == "W4A16_ASYM"
    assert "with zero points" in describe_config(asym)
    odd = _checkpoint(tmp_path, "odd", {"targets": ["Linear"], "weights": {
        "num_bits": 6, "type": "int", "strategy": "channel"}})
    assert checkpoint_scheme(odd) == "custom" and checkpoint_recipe(odd) is None
    bad = _checkpoint(tmp_path, "bad", {"targets": ["Linear"], "weights": {
        "num_bits": 6, "type": "float", "strategy": "channel"}})
    with pytest.raises(QuantUsageError, match="are not valid compressed-tensors arguments: Only num_bits in"):
        checkpoint_scheme(bad)


@pytest.mark.parametrize("method, said", [("gptq", "GPTQ"), ("awq", "AWQ"), ("modelopt", "ModelOpt")])
def test_another_format_is_one_line_saying_what_is_supported(tmp_path: Path, method: str, said: str) -> None:
    path = _checkpoint(tmp_path, method, None, quant_method=method)
    with pytest.raises(QuantUsageError, match=rf"is a .*{said}.* checkpoint \(quant_method '{method}'\), not "
                                              "compressed-tensors: pytest-quant gates compressed-tensors"):
        checkpoint_scheme(path)


def test_awq_calibrates_one_sample_at_a_time() -> None:
    """A GPU's 'auto' batch (16) would hand AWQ's scale search padded batches it replays without their masks (seen on
    an H100: IndexError in the mask hook); AWQ takes 1, an explicit larger batch is refused, GPTQ keeps 16."""
    from pytest_quant.build.calibration import CalibrationSpec
    from pytest_quant.build.checkpoint import batch_size

    auto, four = CalibrationSpec("bundled", 8, 64, "auto"), CalibrationSpec("bundled", 8, 64, 4)
    assert batch_size(auto, "cuda", RecipeSpec("W4A16", algorithm="awq")) == 1
    assert batch_size(auto, "cuda", RecipeSpec("W4A16", algorithm="awq+gptq")) == 1
    assert batch_size(auto, "cuda", RecipeSpec("W4A16")) == 16
    assert batch_size(four, "cuda", RecipeSpec("W4A16")) == 4
    with pytest.raises(QuantUsageError, match=r"--quant-calibration-batch-size=4: AWQ calibrates one sample"):
        batch_size(four, "cuda", RecipeSpec("W4A16", algorithm="awq"))


def test_auto_asks_the_backend_about_the_group_the_build_uses(store: Store, quant_env: pytest.MonkeyPatch) -> None:
    """vLLM runs W4AFP8 at group 128 only; ``auto`` builds it at 64 on SmolLM2 (576 columns). The backends are asked
    about the group the build uses (asked about the preset's 128, vLLM said yes and refused the checkpoint at engine
    start: seen on an H100); a group size given stays the one asked about, a format's own group stays its own."""
    from pytest_quant.session.session import QuantSession
    from pytest_quant.session.settings import Settings

    auto = QuantSession(Settings({"scheme": ["W4AFP8", "FP8_BLOCK", "NVFP4"], "group_size": "auto"}), store.root)
    asked = {name: a["group"]["weights"] for name, a in auto._asked().items()}
    assert asked["W4AFP8"]["group_size"] == 64 and asked["W4A16"]["group_size"] == 64
    assert asked["FP8_BLOCK"]["block_structure"] == [64, 64] and asked["NVFP4"]["group_size"] == 16
    given = QuantSession(Settings({"scheme": ["W4AFP8"], "group_size": 32}), store.root)._asked()
    assert given["W4AFP8"]["group"]["weights"]["group_size"] == 32


def test_a_scheme_vllm_runs_weight_only_says_so() -> None:
    """NVFP4 below capability 10.0 runs on Marlin with 16-bit activations: every row says so, from vLLM's warning or,
    where the probe caught none (vLLM 0.26 on an H100), from its kernel; a weight-only scheme on Marlin says nothing."""
    from pytest_quant.evaluate.backends.vllm import VllmBackend

    support = {"NVFP4": {"kernel": "MarlinNvFp4LinearKernel", "quantizes_activations": True},
               "NVFP4A16": {"kernel": "MarlinNvFp4LinearKernel", "quantizes_activations": False},
               "FP8": {"kernel": "CutlassFP8ScaledMMLinearKernel", "quantizes_activations": True},
               "W4AFP8": {"kernel": "MarlinLinearKernel", "note": "no native FP8 on this GPU"}}
    backend = VllmBackend("python", support=support)
    assert backend.note("NVFP4") == ("NVFP4 evaluated weight-only (MarlinNvFp4LinearKernel) on this device: "
                                     "MarlinNvFp4LinearKernel keeps the activations in 16 bits")
    assert backend.note("W4AFP8") == ("W4AFP8 evaluated weight-only (MarlinLinearKernel) on this device: vLLM: no "
                                      "native FP8 on this GPU")
    assert backend.note("NVFP4A16") is None and backend.note("FP8") is None and backend.note("W4A16") is None
