"""Upstream YAML configs (llm-compressor's and vLLM's formats) parsed and validated, and the shipped fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.plugin.yaml_configs import VllmConfig, parse_config


def test_an_llmcompressor_config_silent_on_dtype_leaves_it_to_the_backend() -> None:
    """Upstream's bfloat16 default is emulated on a CPU without bf16: unset, the backend's dtype for the device
    applies (as for markers); a dtype the config names is passed on."""
    from pytest_quant.plugin.yaml_configs import engine_args

    base = {"model": "m", "scheme": "W8A8", "lmeval": {"task": "quant_facts"}}
    assert "dtype" not in dict(engine_args(parse_config(base)))
    named = {**base, "lmeval": {"task": "quant_facts", "dtype": "bfloat16"}}
    assert dict(engine_args(parse_config(named)))["dtype"] == "bfloat16"
    earlier = {**base, "lmeval": {"task": "quant_facts", "model_args": {"dtype": "float16"}}}
    assert dict(engine_args(parse_config(earlier)))["dtype"] == "float16"


def test_vllm_format_defaults_to_rtol_0_08() -> None:
    c = parse_config({"model_name": "org/m", "limit": 10, "num_fewshot": 5,
                      "tasks": [{"name": "quant_arith", "metrics": [{"name": "exact_match,strict-match", "value": 0.7}]}]})
    assert isinstance(c, VllmConfig) and c.rtol == 0.08 and c.max_model_len == 4096


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "top level: expected a mapping"),
    ({"foo": 1}, "expected 'model_name'"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0}, "tasks: Field required"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": "high"}]}]},
     r"tasks\[0\].metrics\[0\].value: Input should be a valid number"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0, "rtol": 0.1, "rtoll": 0.2,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": 0.5}]}]}, "rtoll: unknown key"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0, "backend": "vllm-vlm",
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": 0.5}]}]}, "vllm-vlm"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "accuracy", "value": 0.5}]}]},
     r"tasks\[0\].metrics\[0\].name: task 'quant_facts' has no metric 'accuracy'"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery": 0.9}}, "lmeval.recovery: unknown key"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery_threshold": "high"}},
     "lmeval.recovery_threshold"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "higher_is_better": False}},
     "higher_is_better: true"),
    ({"model": "m", "recipe": "r.yaml", "scheme": "W4A16", "lmeval": {"task": "quant_facts"}},
     "recipe: give a recipe file or a scheme"),
    ({"model": "m", "lmeval": {"task": "quant_facts"}}, "scheme: missing"),
    ({"model": "m", "scheme": "W4A16", "entrypoint": "model_free_ptq", "lmeval": {"task": "quant_facts"}},
     "entrypoint: Input should be 'oneshot'"),
    ({"model": "m", "scheme": "W4A16", "num_calibration_samples": -1, "lmeval": {"task": "quant_facts"}},
     "num_calibration_samples: Input should be greater than or equal to 1"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery_threshold": {"ac": 0.9}}},
     "lmeval.recovery_threshold.ac: task 'quant_facts' has no metric 'ac'"),
])
def test_malformed_configs_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(QuantUsageError, match=message):
        parse_config(doc)


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_shipped_fixture_configs_parse() -> None:
    import yaml

    for name in ("quant_vllm_format.yaml", "quant_llmcompressor_w4a16_gptq.yaml", "quant_llmcompressor_w8a8.yaml"):
        parse_config(yaml.safe_load((FIXTURES / name).read_text()))
    with pytest.raises(QuantUsageError, match=r"tasks\[0\].metrics\[0\].value: Input should be a valid number"):
        parse_config(yaml.safe_load((FIXTURES / "quant_malformed.yaml").read_text()))


