"""Batched calibration keeps padding out of GPTQ's and SmoothQuant's statistics (a tiny Llama, CPU, seconds).

Calibrated one sample at a time, in padded batches of 4 with pytest-quant's masking, and in the same
batches without it (llm-compressor's own 'padding' behaviour): the masked batches give the weights batch
size 1 gives; unmasked padding changes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pytest_quant.build.batching import pad_masking, padded_batches
from pytest_quant.build.recipes import RecipeSpec, to_modifiers



@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def tokenizer() -> PreTrainedTokenizerFast:
    """A 256-token word-level tokenizer made here: oneshot wants a processor beside a DataLoader."""
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 256)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def samples() -> Dataset:
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 256, (int(n),), generator=g).tolist() for n in torch.randint(8, 40, (12,), generator=g)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def calibrate(path: Path, samples: Dataset, scheme: str, batch: int, mask: bool = True) -> dict[str, torch.Tensor]:
    from llmcompressor import oneshot

    model = LlamaForCausalLM.from_pretrained(str(path)).eval()
    recipe = to_modifiers(RecipeSpec(scheme, group_size=32) if scheme == "W4A16" else RecipeSpec(scheme))
    processor = tokenizer()
    if batch == 1:
        oneshot(model=model, processor=processor, dataset=samples, recipe=recipe, max_seq_length=64,
                num_calibration_samples=len(samples), shuffle_calibration_samples=False)
    else:
        loader, masks = padded_batches(samples, batch, pad_id=0)
        if mask:
            with pad_masking(model, masks):
                oneshot(model=model, processor=processor, dataset=loader, recipe=recipe, max_seq_length=64)
        else:
            oneshot(model=model, processor=processor, dataset=loader, recipe=recipe, max_seq_length=64)
    return {k: v.float().clone() for k, v in model.state_dict().items() if k.endswith("proj.weight")}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The fraction of quantized weights that differ (a float rounding difference can flip a rare one)."""
    return sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a) / sum(a[k].numel() for k in a)


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8"])
def test_masked_batches_calibrate_as_one_sample_at_a_time(tiny: Path, samples: Dataset, scheme: str) -> None:
    one = calibrate(tiny, samples, scheme, 1)
    masked = calibrate(tiny, samples, scheme, 4)
    unmasked = calibrate(tiny, samples, scheme, 4, mask=False)
    print(scheme, "changed by masked batches", changed(one, masked), "by unmasked", changed(one, unmasked))
    assert changed(one, masked) < 0.001, "masked padding changed the calibrated weights"
    assert changed(one, unmasked) > 0.05, "unmasked padding should change them"


def test_batches_are_length_sorted_and_padded_on_the_right(samples: Dataset) -> None:
    loader, masks = padded_batches(samples, 4, pad_id=0)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 4]
    lengths = [int(b["attention_mask"].sum(1).max()) for b in batches]
    assert lengths == sorted(lengths, reverse=True)
    for b, m in zip(batches, masks):
        assert torch.equal(b["attention_mask"] == 0, m)
        assert (b["input_ids"][m] == 0).all()
