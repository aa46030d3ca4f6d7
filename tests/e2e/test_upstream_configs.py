"""Configs as upstream writes them, whose tasks are lm-eval's own (its task registry, no model)."""

from __future__ import annotations

import pytest

from pytest_quant.evaluate.tasks import check_available
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.plugin.yaml_configs import LlmCompressorConfig, parse_config

# llm-compressor's tests/lmeval/configs/w4a16_gptq.yaml, as upstream writes it.
UPSTREAM_LLMC = """cadence: "weekly"
model: meta-llama/Meta-Llama-3-8B-Instruct
scheme: W4A16
dataset_id: perfectblend
quant_type: "GPTQ"
lmeval:
  recovery_threshold:
    exact_match,strict-match: 0.94
    exact_match,flexible-extract: 0.94
  metrics:
    exact_match,flexible-extract: 0.72
    exact_match,strict-match: 0.72
"""


def test_upstream_llmcompressor_config_is_accepted_with_its_defaults(tmp_path, monkeypatch) -> None:
    import yaml

    (tmp_path / "openai___gsm8k").mkdir()  # a machine with gsm8k in its datasets cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    check_available.cache_clear()
    c = parse_config(yaml.safe_load(UPSTREAM_LLMC))
    assert isinstance(c, LlmCompressorConfig)
    assert (c.lmeval.task, c.lmeval.num_fewshot, c.lmeval.limit, c.lmeval.model) == ("gsm8k", 5, 1000, "vllm")
    assert c.lmeval.recovery_threshold == {"exact_match,strict-match": 0.94, "exact_match,flexible-extract": 0.94}
    assert c.num_calibration_samples == 512 and c.max_seq_length == 2048


def test_an_upstream_config_whose_data_needs_the_hub_is_refused_offline_naming_the_dataset(tmp_path, monkeypatch) -> None:
    """Issue 18: llm-compressor's w4a16_gptq.yaml offline ended in INTERNALERROR after 33 s of retries."""
    import yaml

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_available.cache_clear()  # an earlier test's answer for a machine with the data cached
    with pytest.raises(QuantUsageError, match=r"lmeval.task: task 'gsm8k' reads dataset 'openai/gsm8k' \(config 'main'\) "
                                              r"from the Hugging Face Hub.*HF_DATASETS_OFFLINE=1.*bundled task"):
        parse_config(yaml.safe_load(UPSTREAM_LLMC))
