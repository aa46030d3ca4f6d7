"""Calibration batch size: the plugin's build at several batch sizes vs the bare guide script, side by side.

    python benchmarks/batching.py --scheme W4A16 --profile guide --batches 8,16,32 --out results.json

For one scheme, in this one process and on this one device: the guide's own steps as a bare script
(load, the guide's calibration preprocessing, ``oneshot`` one sample at a time, ``save_pretrained``), then
pytest-quant's ``build_checkpoint`` at each batch size (padded, length-sorted batches with padding masked out
of the statistics, pytest_quant/build/batching.py). For each checkpoint: wall time (load to saved), peak GPU
memory (CUDA) or peak RSS growth (CPU), and quality against the base model: mean KL and top-1 agreement
on the bundled held-out prompts, and quant_facts accuracy (transformers backend, the first 250 items in
the default item order). Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pytest_quant.build.checkpoint import batch_size, build_checkpoint, load_tokenizer
from pytest_quant.build.calibration import CalibrationSpec, prepare_calibration
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.evaluate.fidelity import fidelity
from pytest_quant.gate.scores import aggregate
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.session.settings import PROFILES
from pytest_quant.build.recipes import RecipeSpec, check_shapes, to_modifiers
from pytest_quant.infra.store import Store
from pytest_quant.evaluate.tasks import item_order

MODEL = "smollm2-135m-instruct"


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bare(base: Path, recipe: RecipeSpec, calib: CalibrationSpec, out: Path, device: str) -> dict[str, Any]:
    """The guide's script: load, preprocess as the guide, oneshot (batch 1), save compressed."""
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    _peak_reset(device)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    tok = load_tokenizer(base)
    ds = prepare_calibration(calib, tok)
    torch.manual_seed(0)
    oneshot(model=model, dataset=ds, recipe=to_modifiers(recipe), max_seq_length=calib.max_seq_length,
            num_calibration_samples=calib.num_samples)
    model.save_pretrained(str(out), save_compressed=True)
    tok.save_pretrained(str(out))
    seconds = time.perf_counter() - start
    del model
    return {"seconds": round(seconds, 2), "peak_mib": _peak(device)}


def quality(base: Path, path: Path, store: Store, device: str) -> dict[str, Any]:
    f = fidelity(base, path, store, device=device)
    run, ids = EvalRun("quant_facts"), item_order("quant_facts", 0)[:250]
    items = evaluate(path, {run: ids}, store, backend="hf", device=device)[run]
    return {"kl": round(f["kl"], 4), "top1": round(f["top1_agreement"], 4),
            "acc": round(aggregate("acc", items.values("acc", ids))[0], 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scheme", default="W4A16")
    p.add_argument("--profile", default="guide", choices=tuple(PROFILES))
    p.add_argument("--batches", default="8,16,32")
    p.add_argument("--no-bare", action="store_true")
    p.add_argument("--store", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prof = PROFILES[a.profile]
    store = Store(a.store or tempfile.mkdtemp(prefix="batching-store-"))
    base = materialize(resolve_model(MODEL), store)[0]
    from pytest_quant.build.checkpoint import _shape_model

    recipe = check_shapes(_shape_model(base, False), RecipeSpec(a.scheme, group_size="auto"))
    rows: list[dict[str, Any]] = []
    if not a.no_bare:
        calib = CalibrationSpec("bundled", prof["num_samples"], prof["max_seq_length"])
        out = Path(tempfile.mkdtemp(prefix="bare-"))
        rows.append({"build": "bare guide script", "batch": 1, **bare(base, recipe, calib, out, device),
                     **quality(base, out, store, device)})
        print(rows[-1], flush=True)
    for b in [int(x) for x in a.batches.split(",") if x]:
        calib = CalibrationSpec("bundled", prof["num_samples"], prof["max_seq_length"], b)
        _peak_reset(device)
        start = time.perf_counter()
        ck = build_checkpoint(MODEL, recipe, calib, store, device=device, rebuild=True)
        seconds = time.perf_counter() - start
        info = ck.manifest["info"]
        rows.append({"build": "pytest-quant", "batch": batch_size(calib, device), "seconds": round(seconds, 2),
                     "calibrate_seconds": info["seconds"]["calibrate"],
                     "peak_mib": info.get("peak_gpu_mib", info.get("peak_rss_mib")),
                     **quality(base, ck.path, store, device)})
        print(rows[-1], flush=True)
    ref = rows[0]
    print(f"\n{a.scheme}, profile {a.profile} ({prof['num_samples']} x {prof['max_seq_length']}), {device}: "
          f"{torch.cuda.get_device_name(0) if device == 'cuda' else platform.processor() or platform.machine()}")
    print(f"{'build':18} {'batch':>5} {'wall s':>8} {'vs first':>8} {'peak MiB':>9} {'KL':>7} {'top-1':>6} {'acc':>6}")
    for r in rows:
        print(f"{r['build']:18} {r['batch']:>5} {r['seconds']:>8.1f} {r['seconds'] / ref['seconds']:>7.2f}x "
              f"{r['peak_mib']:>9.0f} {r['kl']:>7.4f} {r['top1']:>6.3f} {r['acc']:>6.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"scheme": a.scheme, "profile": a.profile, "device": device,
                                           "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
