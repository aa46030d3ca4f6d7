"""Fast unit tests of options, recipes, gates, hardware table, YAML configs, baselines and model sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_quant.baseline import Baseline, save_baseline
from pytest_quant.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.gates import Threshold, check, wilson_interval
from pytest_quant.hardware import Device, skip_reason
from pytest_quant.models import resolve_model
from pytest_quant.options import Settings
from pytest_quant.recipes import RecipeSpec, check_shapes, to_modifiers
from pytest_quant.yaml_items import parse_config

# -- options ---------------------------------------------------------------------------------


def test_option_order_cli_env_ini_marker_profile_default() -> None:
    s = Settings(cli={"limit": "5"}, ini={"limit": "6"}, env={"QUANT_LIMIT": "7"})
    assert s.get("limit", {"limit": 8}) == 5
    s = Settings(ini={"limit": "6"}, env={"QUANT_LIMIT": "7"})
    assert s.get("limit", {"limit": 8}) == 7
    s = Settings(ini={"limit": "6"}, env={})
    assert s.get("limit", {"limit": 8}) == 6
    s = Settings(env={})
    assert s.get("limit", {"limit": 8}) == 8
    assert s.get("limit") == 250  # the guide profile
    assert Settings(cli={"profile": "ci"}, env={}).get("limit") == 60
    assert s.get("backend") == "auto"


def test_option_lists_and_bad_values() -> None:
    s = Settings(cli={"scheme": ["W4A16,W8A8"]}, env={"QUANT_MODEL": "a/b, c/d"})
    assert s.get("scheme") == ["W4A16", "W8A8"]
    assert s.get("model") == ["a/b", "c/d"]
    with pytest.raises(QuantUsageError, match="QUANT_LIMIT: bad value 'many'"):
        Settings(env={"QUANT_LIMIT": "many"}).get("limit")
    with pytest.raises(QuantUsageError, match="'tpu' is not one of"):
        Settings(cli={"backend": "tpu"}, env={}).get("backend")
    with pytest.raises(QuantUsageError, match="--quant-profile: 'huge' is not one of guide, ci"):
        Settings(cli={"profile": "huge"}, env={})


# -- recipes ---------------------------------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(576, 576)
        self.down_proj = torch.nn.Linear(1536, 576)
        self.lm_head = torch.nn.Linear(576, 100)


def test_recipe_validation() -> None:
    with pytest.raises(QuantUsageError, match="unknown scheme 'W3A3'"):
        RecipeSpec("W3A3")
    with pytest.raises(QuantUsageError, match="group_size"):
        RecipeSpec("W4A16", group_size=0)
    with pytest.raises(QuantUsageError, match="actorder"):
        RecipeSpec("W4A16", actorder="random")
    with pytest.raises(QuantUsageError, match="smoothing_strength applies to W8A8"):
        RecipeSpec("W4A16", smoothing_strength=0.5)
    with pytest.raises(QuantUsageError, match="dampening_frac"):
        RecipeSpec("W4A16", dampening_frac=2)
    assert RecipeSpec("W4A16", ignore=("re:.*gate.*",)).ignore == ("lm_head", "re:.*gate.*")


def test_group_size_that_does_not_divide_is_refused_with_advice() -> None:
    with pytest.raises(QuantUsageError) as e:
        check_shapes(Tiny(), RecipeSpec("W4A16"))
    msg = str(e.value)
    assert "q_proj (576)" in msg and "group_size=64" in msg and "auto" in msg
    assert "lm_head" not in msg
    assert check_shapes(Tiny(), RecipeSpec("W4A16", group_size="auto")).group_size == 64
    assert check_shapes(Tiny(), RecipeSpec("W4A16", group_size=32)).group_size == 32
    assert check_shapes(Tiny(), RecipeSpec("W8A8")).effective_group_size is None
    with pytest.raises(QuantUsageError, match="quantizes no layer"):
        check_shapes(Tiny(), RecipeSpec("W4A16", ignore=("re:.*",)))


def test_recipes_map_to_the_guides_modifiers() -> None:
    (gptq,) = to_modifiers(RecipeSpec("W4A16", group_size=64, actorder="group", dampening_frac=0.05))
    w = gptq.config_groups["group_0"].weights
    assert (w.num_bits, w.group_size, w.strategy, w.symmetric) == (4, 64, "group", True)
    assert gptq.ignore == ["lm_head"] and gptq.dampening_frac == 0.05 and gptq.actorder == "group"
    sq, gptq8 = to_modifiers(RecipeSpec("W8A8"))
    assert type(sq).__name__ == "SmoothQuantModifier" and sq.smoothing_strength == 0.8
    g = gptq8.config_groups["group_0"]
    assert (g.weights.num_bits, g.weights.strategy) == (8, "channel")
    assert (g.input_activations.num_bits, g.input_activations.strategy, g.input_activations.dynamic) == (8, "token", True)


# -- gates -----------------------------------------------------------------------------------


def test_absolute_and_relative_gates() -> None:
    assert check("acc", 0.6, Threshold(min_value=0.5)).passed
    v = check("acc", 0.4, Threshold(min_value=0.5))
    assert not v.passed and "min_value: 0.4000 >= 0.5000" in v.message
    assert check("acc", 0.58, Threshold(max_drop=0.05), base=0.6).passed
    assert not check("acc", 0.50, Threshold(max_drop=0.05), base=0.6).passed
    r = check("acc", 0.57, Threshold(recovery=0.96), base=0.6)
    assert not r.passed and r.recovery == pytest.approx(0.95)
    assert check("acc", 0.72, Threshold(expected=0.75, rtol=0.05)).passed
    assert not check("acc", 0.70, Threshold(expected=0.75, rtol=0.05)).passed


def test_lower_is_better_metrics() -> None:
    assert check("word_perplexity", 21.0, Threshold(recovery=0.9), base=20.0).passed  # 20/21 = 0.95
    assert not check("word_perplexity", 25.0, Threshold(recovery=0.9), base=20.0).passed
    assert not check("word_perplexity", 25.0, Threshold(max_drop=2.0), base=20.0).passed
    assert check("word_perplexity", 20.5, Threshold(expected=20.0, rtol=0.05)).passed
    assert not check("word_perplexity", 22.0, Threshold(expected=20.0, rtol=0.05)).passed
    assert check("bits_per_byte", 0.9, Threshold(max_value=1.0)).passed
    assert not check("bits_per_byte", 1.1, Threshold(max_value=1.0)).passed


def test_statistics_aware_gates_widen_bounds() -> None:
    t = Threshold(recovery=0.95)
    assert not check("acc", 0.62, t, stderr=0.06, base=0.70, base_stderr=0.06).passed
    assert check("acc", 0.62, Threshold(recovery=0.95, stderr_k=1), stderr=0.06, base=0.70, base_stderr=0.06).passed
    lo, hi = wilson_interval(0.5, 100, 0.95)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    assert check("acc", 0.45, Threshold(min_value=0.5, wilson=0.95), n=100).passed
    assert not check("acc", 0.45, Threshold(min_value=0.5, wilson=0.95), n=10000).passed


def test_threshold_validation() -> None:
    with pytest.raises(QuantUsageError, match=r"outside \[0, 1\]"):
        Threshold(min_value=75).validate("acc")
    Threshold(max_value=75).validate("word_perplexity")
    with pytest.raises(QuantUsageError, match="at least one"):
        Threshold(stderr_k=1).validate("acc")
    with pytest.raises(QuantUsageError, match="wilson applies to proportions"):
        Threshold(max_value=2, wilson=0.9).validate("word_perplexity")
    with pytest.raises(QuantUsageError, match="need the base"):
        check("acc", 0.5, Threshold(max_drop=0.1))


# -- hardware --------------------------------------------------------------------------------

CPU = Device("cpu", "x86_64")
H100 = Device("cuda", "NVIDIA H100", 90, 1, 80)
T4 = Device("cuda", "Tesla T4", 75, 1, 16)
B200 = Device("cuda", "NVIDIA B200", 100, 8, 180)


def test_skip_table() -> None:
    assert skip_reason("W4A16", H100, "vllm") is None
    assert skip_reason("W8A8", H100, "vllm") is None
    assert "needs capability 8.0+, found 1 x Tesla T4 (capability 7.5" in skip_reason("W4A16", T4, "vllm")
    assert skip_reason("W8A8", T4, "vllm") is None
    assert "not supported on capability 10.0+" in skip_reason("W8A8", B200, "vllm")
    assert skip_reason("W4A16", CPU, "vllm") is None and skip_reason("W8A8", CPU, "vllm") is None
    assert "no kernel" in skip_reason("W8A16", CPU, "vllm")
    assert skip_reason("W8A16", CPU, "hf") is None
    assert "capability 10.0+, found CPU only" in skip_reason(None, CPU, "hf", min_capability=100)
    assert "needs capability 10.0+" in skip_reason(None, H100, "vllm", min_capability=100)
    assert "needs 2 GPUs" in skip_reason(None, H100, "vllm", gpus=2)
    assert "GiB" in skip_reason(None, H100, "vllm", gpu_memory_gib=120)


# -- YAML configs ----------------------------------------------------------------------------


def test_vllm_format() -> None:
    checks = parse_config({"model_name": "org/m", "limit": 10, "num_fewshot": 5, "rtol": 0.1,
                           "tasks": [{"name": "gsm8k", "metrics": [{"name": "exact_match,strict-match", "value": 0.7},
                                                                   {"name": "exact_match,flexible-extract", "value": 0.72}]}]})
    assert [c.metric for c in checks] == ["exact_match,strict-match", "exact_match,flexible-extract"]
    assert checks[0].scheme is None and checks[0].threshold.rtol == 0.1 and checks[0].run_args == {"limit": 10, "num_fewshot": 5}


def test_llmcompressor_format() -> None:
    (c,) = parse_config({"model": "org/m", "scheme": "W4A16", "group_size": 64, "dataset_id": "HuggingFaceH4/ultrachat_200k",
                         "dataset_split": "train_sft", "num_calibration_samples": 64,
                         "lmeval": {"task": "gsm8k", "metrics": {"exact_match,flexible-extract": 0.5},
                                    "recovery_threshold": 0.9, "limit": 20}})
    assert c.scheme == "W4A16" and c.threshold.recovery == 0.9 and c.threshold.expected == 0.5
    assert c.calibration_args == {"calibration": "HuggingFaceH4/ultrachat_200k:train_sft", "num_samples": 64}
    assert c.recipe_args == {"group_size": 64}


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "top level: expected a mapping"),
    ({"foo": 1}, "expected 'model_name'"),
    ({"model_name": "m"}, "tasks: missing"),
    ({"model_name": "m", "tasks": [{"name": "t", "metrics": [{"name": "acc", "value": "high"}]}]},
     r"tasks\[0\].metrics\[0\].value: expected"),
    ({"model_name": "m", "tasks": [{"name": "t", "metrics": [{"name": "acc", "value": 75}]}]},
     r"tasks\[0\].metrics\[0\].value: value=|outside \[0, 1\]"),
    ({"model": "m", "scheme": "W9A9", "lmeval": {"task": "t", "metrics": {"acc": 0.5}}}, "scheme: unknown scheme"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"metrics": {"acc": 0.5}}}, "lmeval.task: missing"),
    ({"model": "m", "scheme": "W4A16", "num_calibration_samples": -1, "lmeval": {"task": "t", "metrics": {"acc": 0.5}}},
     "num_calibration_samples: calibration num_samples must be a positive integer"),
])
def test_malformed_configs_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(QuantUsageError, match=message):
        parse_config(doc)


# -- baselines -------------------------------------------------------------------------------

ROW = {"key": "m|W4A16|quant_facts|acc|bos=True", "quantized": 0.7, "stderr": 0.05, "n": 60,
       "settings": {"limit": 60, "backend": "vllm"}, "versions": {"lm_eval": "0.4.13"}}


def test_baseline_roundtrip_and_regression(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert save_baseline(path, [ROW], overwrite=False) == 1
    with pytest.raises(QuantUsageError, match="exists; pass --quant-overwrite-baseline"):
        save_baseline(path, [ROW], overwrite=False)
    b = Baseline.load(path)
    assert b.compare(ROW["key"], "acc", 0.69, ROW["settings"], 0.05).passed
    v = b.compare(ROW["key"], "acc", 0.60, {"limit": 250, "backend": "vllm"}, 0.05)
    assert not v.passed and "settings differ from the baseline's: limit 60 -> 250" in v.message
    assert b.compare("other", "acc", 0.1, {}, 0.05) is None


def test_bad_baselines(tmp_path: Path) -> None:
    with pytest.raises(QuantUsageError, match="does not exist"):
        Baseline.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(QuantUsageError, match="not valid JSON"):
        Baseline.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(QuantUsageError, match="not a pytest-quant baseline"):
        Baseline.load(tmp_path / "y.json")


# -- model sources ---------------------------------------------------------------------------


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
    from pytest_quant.models import materialize
    from pytest_quant.store import Store

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(QuantEnvironmentError, match="not reachable and the model is not in the local cache"):
        materialize(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct"), Store(tmp_path / "s"))


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_shipped_fixture_configs_parse() -> None:
    import yaml

    (vllm,) = parse_config(yaml.safe_load((FIXTURES / "quant_vllm_format.yaml").read_text()))
    assert (vllm.scheme, vllm.task, vllm.metric, vllm.threshold.rtol) == (None, "quant_facts", "acc", 0.10)
    (llmc,) = parse_config(yaml.safe_load((FIXTURES / "quant_llmcompressor_format.yaml").read_text()))
    assert llmc.calibration_args == {"calibration": "HuggingFaceH4/ultrachat_200k:train_sft", "num_samples": 512}
    with pytest.raises(QuantUsageError, match=r"tasks\[0\].metrics\[0\].value: expected"):
        parse_config(yaml.safe_load((FIXTURES / "quant_malformed.yaml").read_text()))
