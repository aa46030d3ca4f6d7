"""Cost as the model grows: random-initialized models of real architectures, on one and two GPUs (issue 20).

    python scripts/gpu/scaling.py --arch llama-3.2-1b --samples 512 --steps plugin,plugin2,bare,vllm --out DIR

The architectures' published configurations are built with ``from_config`` (nothing is downloaded): the weights
are random, so only time and memory mean anything here, not accuracy or KL. The tokenizer is the bundled SmolLM2's
(49152 tokens; the embeddings keep the architecture's 128256 rows, the others are never looked up).

Steps, each timed from load to saved checkpoint (builds) or to the last answer (vLLM), with the peak memory of
each GPU (nvidia-smi every 0.5 s):
  bare     the guide's script: load, the guide's preprocessing, ``oneshot`` one sample at a time, save
  plugin   pytest-quant's ``build_checkpoint`` on one GPU, calibration batch 'auto'
  plugin2  the same on two GPUs (torchrun, llm-compressor's distributed oneshot)
  vllm     vLLM engines on the base model, tensor parallel 1 and 2: engine start and items/s on quant_facts
           (0-shot, every item)
DIR/scaling-ARCH.json is rewritten after every step, so a run cut off keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pytest_quant.build.checkpoint import _shape_model, batch_size, build_checkpoint, load_tokenizer  # noqa: E402
from pytest_quant.build.calibration import CalibrationSpec  # noqa: E402
from pytest_quant.evaluate.evaluator import EvalRun, evaluate  # noqa: E402
from pytest_quant.evaluate.gpu_memory import release_models  # noqa: E402
from pytest_quant.build.models import materialize, resolve_model  # noqa: E402
from pytest_quant.build.recipes import RecipeSpec, check_shapes  # noqa: E402
from pytest_quant.infra.store import Store  # noqa: E402
from pytest_quant.evaluate.tasks import item_order  # noqa: E402

# Published configurations (the models' config.json on the hub), without RoPE scaling: it moves no cost.
LLAMA = {"model_type": "llama", "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
         "rope_theta": 500000.0, "max_position_embeddings": 131072, "hidden_act": "silu"}
ARCHS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {**LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.1-8b": {**LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "head_dim": 128, "tie_word_embeddings": False},
    # a rehearsal of this script on a CPU
    "tiny": {**LLAMA, "vocab_size": 49152, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True},
}


def gpu_memory() -> list[int]:
    """MiB used now on each GPU (empty without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split()]


def measured(fn: Callable[[], Any]) -> tuple[Any, float, list[int]]:
    """(fn(), wall seconds, peak MiB per GPU while it ran, above what was in use before)."""
    before = gpu_memory()
    peaks, done = list(before), threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peaks[:] = [max(a, b) for a, b in zip(peaks, gpu_memory())]

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, round(time.perf_counter() - start, 1), [p - b for p, b in zip(peaks, before)]


def make_model(arch: str, root: Path, tokenizer_dir: Path) -> Path:
    """A random-initialized bf16 checkpoint of ``arch`` with the bundled tokenizer (kept under ``root``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = root / arch
    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer(tokenizer_dir)
    spec = dict(ARCHS[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default)
    tmp = root / f".{arch}.tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    tmp.rename(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=tuple(ARCHS), required=True)
    p.add_argument("--scheme", default="W4A16")
    p.add_argument("--samples", type=int, default=512, help="calibration samples (the guide: 512)")
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--steps", default="plugin,plugin2,bare,vllm")
    p.add_argument("--models", default="/tmp/scaling-models", help="where the random models are kept")
    p.add_argument("--store", default=os.environ.get("QUANT_CACHE_DIR", "/tmp/scaling-store"))
    p.add_argument("--vllm-python", default=os.environ.get("QUANT_VLLM_PYTHON"))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a two-GPU build may run")
    p.add_argument("--out", default=".")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    store = Store(a.store)
    results_path = Path(a.out) / f"scaling-{a.arch}.json"
    results: dict[str, Any] = {"arch": a.arch, "config": ARCHS[a.arch], "scheme": a.scheme, "samples": a.samples,
                               "max_seq_length": a.max_seq_length, "device": device, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                               "weights": "random (from_config): time and memory only", "steps": {}}

    def record(step: str, row: dict[str, Any]) -> None:
        results["steps"][step] = row
        results_path.write_text(json.dumps(results, indent=2))
        print(f"[scaling] {a.arch} {step}: {row}", flush=True)

    base_tokenizer = materialize(resolve_model("smollm2-135m-instruct"), store)[0]
    model, seconds, _ = measured(lambda: make_model(a.arch, Path(a.models), base_tokenizer))
    params = sum(t.numel() for t in _shape_model(model, False).parameters())
    record("model", {"path": str(model), "seconds": seconds, "parameters": params})
    recipe = RecipeSpec(a.scheme, group_size="auto")
    calib = CalibrationSpec("bundled", a.samples, a.max_seq_length, "auto")
    for step in a.steps.split(","):
        if step == "bare":
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from batching import bare  # benchmarks/batching.py: the guide's steps, one sample at a time

            shaped = check_shapes(_shape_model(model, False), recipe)
            out = Path(a.models) / f"{a.arch}-bare-{a.scheme}"
            row, seconds, peaks = measured(lambda: bare(model, shaped, CalibrationSpec("bundled", a.samples,
                                                                                      a.max_seq_length), out, device))
            record(step, {"seconds": seconds, "peak_mib_per_gpu": peaks, "torch_peak_mib": row["peak_mib"],
                          "batch": 1})
        elif step in ("plugin", "plugin2"):
            gpus = 2 if step == "plugin2" else 1
            ck, seconds, peaks = measured(lambda: build_checkpoint(str(model), recipe, calib, store, device=device,
                                                                   gpus=gpus, rebuild=True, timeout=a.timeout))
            info = ck.manifest["info"]
            record(step, {"seconds": seconds, "peak_mib_per_gpu": peaks, "gpus": gpus, "path": str(ck.path),
                          "batch": batch_size(calib, device), "torch_peak_mib": info.get("peak_gpu_mib"),
                          "phases": info.get("seconds")})
        elif step == "vllm":
            run = EvalRun("quant_facts", num_fewshot=0)
            ids = item_order("quant_facts", 0)
            for tp in (1, 2) if device == "cuda" else (1,):
                res, seconds, peaks = measured(lambda: evaluate(
                    model, {run: ids}, Store(store.root / f"vllm-tp{tp}"), backend="vllm", vllm_python=a.vllm_python,
                    device=device, gpus=tp, label=f"{a.arch} tp={tp}")[run])
                release_models()
                record(f"vllm tp={tp}", {"seconds": seconds, "eval_seconds": res.seconds,
                                         "start_seconds": round(seconds - res.seconds, 1), "items": len(ids),
                                         "items_per_s": round(len(ids) / res.seconds, 1),
                                         "peak_mib_per_gpu": peaks})
        else:
            raise SystemExit(f"unknown step {step!r}: bare, plugin, plugin2 or vllm")
    print(json.dumps(results["steps"], indent=1))


if __name__ == "__main__":
    main()
