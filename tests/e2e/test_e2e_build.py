"""Real builds of the bundled SmolLM2 with llm-compressor (CPU, CI profile): checkpoints as the guides make them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from safetensors import safe_open

from pytest_quant.build.checkpoint import Checkpoint, build_checkpoint, load_tokenizer
from pytest_quant.build.calibration import BUNDLED_CALIBRATION, CalibrationSpec, calibration_digest, prepare_calibration
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.build.checks import checkpoint_problems, generate
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.store import Store

from ..conftest import CI_CALIBRATION, MODEL



@pytest.fixture(scope="session", params=["W4A16", "W8A8"])
def checkpoint(request: pytest.FixtureRequest, store: Store) -> Checkpoint:
    return build_checkpoint(MODEL, RecipeSpec(request.param, group_size="auto"), CI_CALIBRATION, store)


def tensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    out = {}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for k in f.keys():
            s = f.get_slice(k)
            out[k] = (s.get_dtype(), s.get_shape())
    return out


def test_calibration_is_prepared_as_the_guides_do(store: Store) -> None:
    base = materialize(resolve_model(MODEL), store)[0]
    tok = load_tokenizer(base)
    ds = prepare_calibration(CalibrationSpec("bundled", 512, 2048), tok)
    assert len(ds) == 512
    assert max(len(x) for x in ds["input_ids"]) <= 2048
    first = ds[0]["input_ids"]
    assert first[0] == tok.convert_tokens_to_ids("<|im_start|>") and first[1] != first[0]  # template's, not doubled
    short = prepare_calibration(CalibrationSpec("bundled", 64, 128), tok)
    assert max(len(x) for x in short["input_ids"]) == 128
    assert calibration_digest(short) == calibration_digest(prepare_calibration(CalibrationSpec("bundled", 64, 128), tok))
    raw = load_dataset("json", data_files=str(BUNDLED_CALIBRATION), split="train").select(range(64)).shuffle(seed=42)
    text = tok.apply_chat_template(raw[0]["messages"], tokenize=False)
    assert short[0]["input_ids"] == tok(text, add_special_tokens=False, truncation=True, max_length=128)["input_ids"]


def test_checkpoint_is_compressed_tensors(checkpoint: Checkpoint) -> None:
    q = json.loads((checkpoint.path / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    assert "lm_head" in q["ignore"]
    t = tensors(checkpoint.path)
    layer = "model.layers.0.mlp.down_proj"  # 1536 input columns, 576 outputs
    if checkpoint.recipe.scheme == "W4A16":
        assert q["format"] == "pack-quantized"
        assert q["config_groups"]["group_0"]["weights"]["group_size"] == 64
        assert t[f"{layer}.weight_packed"] == ("I32", [576, 1536 * 4 // 32])
        assert t[f"{layer}.weight_scale"][1] == [576, 1536 // 64]
    else:
        assert q["format"] == "int-quantized"
        acts = q["config_groups"]["group_0"]["input_activations"]
        assert (acts["num_bits"], acts["dynamic"], acts["strategy"]) == (8, True, "token")
        assert t[f"{layer}.weight"] == ("I8", [576, 1536])
        assert t[f"{layer}.weight_scale"][1] == [576, 1]
    assert not any(k.startswith("lm_head.weight_") for k in t)
    assert checkpoint_problems(checkpoint.path, checkpoint.recipe) == []
    assert (checkpoint.path / "tokenizer.json").is_file() and (checkpoint.path / "chat_template.jinja").is_file()
    assert checkpoint.manifest["info"]["seconds"]["calibrate"] > 0


def test_checkpoint_loads_and_answers(checkpoint: Checkpoint) -> None:
    """The checkpoint loads back in transformers and answers. W8A8 answers this prompt right in every configuration
    measured; W4A16 is a real regression on this 135M model (its accuracy gate FAILs), and whether its greedy
    answer to this one prompt is right depends on the machine: built and run on two threads it says Paris, on one
    thread it did not (CI rehearsal 2026-11-26, docs/THRESHOLDS.md "Across machines"). One item is no gate."""
    answer = generate(checkpoint.path, "What is the capital of France?")
    assert answer.strip(), "the checkpoint generated nothing"
    if checkpoint.scheme == "W8A8":
        assert "Paris" in answer


def test_second_request_is_served_from_the_store(checkpoint: Checkpoint, store: Store) -> None:
    again = build_checkpoint(MODEL, RecipeSpec(checkpoint.recipe.scheme, group_size="auto"), CI_CALIBRATION,
                             Store(store.root))
    assert again.cached
    assert again.manifest["build_id"] == checkpoint.manifest["build_id"]


def test_default_group_size_is_refused_for_smollm2(store: Store) -> None:
    from pytest_quant.infra.errors import QuantUsageError

    with pytest.raises(QuantUsageError, match=r"group_size=128 cannot quantize .* Use group_size=64"):
        build_checkpoint(MODEL, RecipeSpec("W4A16"), CI_CALIBRATION, store)


@pytest.mark.slow
def test_two_xdist_workers_build_once_and_builds_are_bit_identical(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Two workers ask for the same (tiny-calibration) checkpoint at once: one builds, the other waits."""
    out = tmp_path / "seen"
    out.mkdir()
    pytester.makepyfile(test_two=textwrap.dedent(f"""
        import json, os, pytest
        @pytest.mark.parametrize("n", [1, 2])
        def test_ck(n, quantized_checkpoint):
            ck = quantized_checkpoint
            path = os.path.join({str(out)!r}, os.environ["PYTEST_XDIST_WORKER"])
            with open(path, "w") as f:
                json.dump({{"cached": ck.cached, "build_id": ck.manifest["build_id"], "files": ck.manifest["files"]}}, f)
    """))
    cache = tmp_path / "cache"
    r = pytester.runpytest_subprocess("-n", "2", "--quant-scheme", "W4A16", "--quant-group-size", "auto",
                                      "--quant-num-samples", "8", "--quant-max-seq-length", "64",
                                      "--quant-cache-dir", str(cache), "-p", "no:randomly")
    r.assert_outcomes(passed=2)
    seen = [json.loads(p.read_text()) for p in sorted(out.iterdir())]
    assert len(seen) == 2, "both workers ran a test"
    assert sorted(s["cached"] for s in seen) == [False, True]
    assert seen[0]["build_id"] == seen[1]["build_id"]
    assert len(list((cache / "checkpoints").glob("[0-9a-f]*[!k]"))) == 1
    # The thread count is part of the key: float sums run in another order with another thread count, so a
    # serial build (two threads here) is another checkpoint than the workers' (one thread each).
    (entry,) = [p for p in (cache / "checkpoints").iterdir() if p.is_dir() and not p.name.startswith(".")]
    material = json.loads((entry / "manifest.json").read_text())["material"]
    assert material["threads"] == 1
    assert Store(cache).key({**material, "threads": 2}) != entry.name
    # Determinism: the same inputs built again in another store, with the workers' thread count, give the
    # same bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        other = build_checkpoint(MODEL, RecipeSpec("W4A16", group_size="auto"), CalibrationSpec("bundled", 8, 64),
                                 Store(tmp_path / "other"))
    finally:
        torch.set_num_threads(threads)
    assert not other.cached
    assert other.manifest["files"] == seen[0]["files"]


@pytest.mark.slow  # a build of its own
def test_batched_calibration_keeps_fidelity(store: Store) -> None:
    """Batch 4 (padded, masked) against batch 1 on the real model: KL within 10%, top-1 within 0.02."""
    from pytest_quant.evaluate.fidelity import fidelity

    base = materialize(resolve_model(MODEL), store)[0]
    one = build_checkpoint(MODEL, RecipeSpec("W4A16", group_size="auto"), CI_CALIBRATION, store)
    four = build_checkpoint(MODEL, RecipeSpec("W4A16", group_size="auto"),
                            CalibrationSpec("bundled", CI_CALIBRATION.num_samples, CI_CALIBRATION.max_seq_length, 4),
                            store)
    assert four.manifest["info"]["batch_size"] == 4 and four.key != one.key
    f1, f4 = fidelity(base, one.path, store), fidelity(base, four.path, store)
    assert abs(f4["kl"] - f1["kl"]) <= 0.10 * f1["kl"], (f1["kl"], f4["kl"])
    assert abs(f4["top1_agreement"] - f1["top1_agreement"]) <= 0.02, (f1["top1_agreement"], f4["top1_agreement"])
