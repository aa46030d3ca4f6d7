"""Build a quantized compressed-tensors checkpoint: the guides' steps as one cached function.

load model -> prepare calibration data -> ``oneshot`` with the recipe -> ``save_pretrained(save_compressed=True)``.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_quant import __version__
from pytest_quant.build.calibration import CalibrationSpec, calibration_digest, prepare_calibration
from pytest_quant.build.distributed import run_distributed_build
from pytest_quant.infra.machine import emulation
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.build.models import ModelSource, materialize, resolve_model
from pytest_quant.build.recipes import RecipeSpec, check_shapes, to_modifiers
from pytest_quant.build.schemes import needs_data
from pytest_quant.infra.exits import innermost
from pytest_quant.infra.files import content_digest
from pytest_quant.infra.store import Store
from pytest_quant.infra.versions import versions

LIBRARIES = ("llmcompressor", "compressed-tensors", "transformers", "torch")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QuantUsageError("--quant-device cuda was asked for but torch sees no CUDA device")
    return device


class BuildFailed(QuantError):
    """llm-compressor failed while quantizing; the message holds its own root cause."""


# Calibration batch size 'auto' per device: measured in docs/PERFORMANCE.md (CPU) and docs/GPU.md (CUDA).
AUTO_BATCH = {"cpu": 1, "cuda": 16}


@dataclass
class Checkpoint:
    path: Path
    base_path: Path | None  # None for a checkpoint given from elsewhere (its base is the session's model)
    source: ModelSource
    recipe: RecipeSpec | None  # None when a given checkpoint's scheme is not one pytest-quant builds
    manifest: dict[str, Any]
    cached: bool
    scheme: str = ""

    @property
    def key(self) -> str:
        return self.manifest["key"]


def given_checkpoint(path: Path, model: str, scheme: str) -> Checkpoint:
    """A compressed-tensors checkpoint built elsewhere, identified by its content."""
    from pytest_quant.build.checks import checkpoint_problems

    problems = checkpoint_problems(path)
    if problems:
        raise QuantUsageError(f"checkpoint {path} is not a usable compressed-tensors checkpoint: "
                              + "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    from pytest_quant.build.checks import checkpoint_recipe

    recipe = checkpoint_recipe(path)
    return Checkpoint(path, None, resolve_model(model), recipe, {"key": content_digest(path)[:32], "seconds": None},
                      True, scheme)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def _shape_model(path: Path, trust_remote_code: bool) -> Any:
    """The model's modules on the meta device: shapes without weights, for recipe checks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def calibration_dtype(device: str) -> Any:
    """The dtype a build calibrates in: the model's own ("auto", as the guides) on a GPU; float32 on a CPU.

    On CPUs without native bfloat16 (no AVX-512 BF16 or AMX) a bf16 matmul is emulated: measured 25x slower than
    float32 on a 2-core AMD EPYC with AVX2 (docs/PERFORMANCE.md), and its rounding depends on which path the CPU
    takes. float32 is fast on every CPU and rounds alike; the saved checkpoint is cast back (cast_checkpoint).
    """
    if device == "cpu":
        import torch

        return torch.float32
    return "auto"


def base_dtype(base_path: Path) -> str | None:
    """The base model's dtype from its config (torch_dtype, or dtype in newer transformers)."""
    config = json.loads((base_path / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")


def cast_checkpoint(out: Path, dtype: str | None) -> None:
    """Give a checkpoint calibrated in float32 the base model's dtype: float32 tensors (scales, norms, unquantized
    layers) cast, integer tensors (packed or int8 weights, zero points) untouched, the config's dtype set; as a
    build on a GPU saves it."""
    if dtype not in ("bfloat16", "float16"):
        return
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    for f in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(f))
        save_file({k: v.to(target) if v.dtype == torch.float32 else v for k, v in tensors.items()}, str(f),
                  metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def batch_size(calib: CalibrationSpec, device: str, recipe: RecipeSpec | None = None) -> int:
    """The calibration batch size to use: the spec's, or for 'auto' the one measured to pay on ``device``; AWQ
    one sample at a time (its scale search replays each layer's cached inputs outside llm-compressor's batch loop,
    where the batch's padding mask cannot follow them: build/batching.py)."""
    awq = recipe is not None and (recipe.method.startswith("awq") or "AWQModifier" in (recipe.text or ""))
    if calib.batch_size == "auto":
        return 1 if awq else AUTO_BATCH.get(device, 1)
    if awq and int(calib.batch_size) > 1:
        raise QuantUsageError(f"--quant-calibration-batch-size={calib.batch_size}: AWQ calibrates one sample at a "
                              "time here (its padded batches cannot be masked); pass 1 or auto")
    return int(calib.batch_size)


def _quantize(base_path: Path, recipe: RecipeSpec, calib: CalibrationSpec, dataset: Any, tokenizer: Any,
              device: str, trust_remote_code: bool, out: Path, log: Any, gpus: int = 1,
              timeout: float = 7200.0) -> dict[str, Any]:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    from pytest_quant.build.batching import pad_masking, padded_batches
    from pytest_quant.infra.progress import reporting

    if gpus > 1:
        return {"device": device, **run_distributed_build(gpus, base_path, recipe, calib, out, trust_remote_code, log,
                                                          timeout)}
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batch = batch_size(calib, device, recipe)
    t0 = time.perf_counter()
    log(f"loading {base_path} for {recipe.scheme}")
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=calibration_dtype(device),
                                                 trust_remote_code=trust_remote_code)
    t1 = time.perf_counter()
    log(f"quantizing {recipe.label} without data ({device})" if dataset is None else
        f"calibrating {recipe.label} on {len(dataset)} samples x <= {calib.max_seq_length} tokens ({device}, "
        f"batch {batch})")
    try:
        with reporting(log, f"calibrating {recipe.label}"):  # llm-compressor's bar: layer group i/N, samples
            if dataset is None:  # round-to-nearest of a data-free scheme: no calibration pass
                oneshot(model=model, recipe=to_modifiers(recipe))
            elif batch == 1:
                oneshot(model=model, dataset=dataset, recipe=to_modifiers(recipe), max_seq_length=calib.max_seq_length,
                        num_calibration_samples=calib.num_samples, shuffle_calibration_samples=False)
            else:
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                loader, masks = padded_batches(dataset, batch, pad)
                with pad_masking(model, masks):
                    oneshot(model=model, processor=tokenizer, dataset=loader, recipe=to_modifiers(recipe),
                            max_seq_length=calib.max_seq_length)
    except Exception as e:  # llm-compressor wraps what it hit: name the cause, keep the chain for the traceback
        raise BuildFailed(f"llm-compressor failed quantizing {recipe.label}: {innermost(e)}") from e
    t2 = time.perf_counter()
    log(f"saving compressed-tensors checkpoint ({recipe.format})")
    model.save_pretrained(str(out), save_compressed=True)
    from pytest_quant.build.checks import quantized_layers

    if not quantized_layers(out):  # llm-compressor only warns when targets match nothing
        raise QuantUsageError(f"{recipe.label}: the recipe quantized no layer (its targets and ignore match no layer "
                              "of the model; llm-compressor warned 'Could not match ...'); nothing was cached")
    tokenizer.save_pretrained(str(out))
    if device == "cpu":
        cast_checkpoint(out, base_dtype(base_path))
    t3 = time.perf_counter()
    info: dict[str, Any] = {"device": device, "torch_threads": torch.get_num_threads(), "batch_size": batch,
                            "seconds": {"load": round(t1 - t0, 2), "calibrate": round(t2 - t1, 2),
                                        "save": round(t3 - t2, 2)},
                            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        info["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return info


def build_checkpoint(model: str, recipe: RecipeSpec, calibration: CalibrationSpec, store: Store,
                     device: str = "auto", rebuild: bool = False, trust_remote_code: bool = False,
                     gpus: int = 1, timeout: float = 7200.0) -> Checkpoint:
    """Quantize ``model`` with ``recipe`` (or serve it from ``store``) and return the checkpoint.

    ``gpus > 1`` runs llm-compressor's distributed oneshot, one torchrun process per GPU, for at most ``timeout``
    seconds.
    """
    if gpus < 1:
        raise QuantUsageError(f"the number of GPUs for a build must be at least 1, got {gpus}")
    source = resolve_model(model)
    base_path, ident = materialize(source, store)
    device = resolve_device(device)
    recipe = check_shapes(_shape_model(base_path, trust_remote_code), recipe)
    tokenizer = load_tokenizer(base_path, trust_remote_code)
    data_free = recipe.text is None and not needs_data(recipe.scheme, recipe.method, recipe.kv_cache)
    dataset = None if data_free else prepare_calibration(calibration, tokenizer)
    material = {
        "model": ident,
        "recipe": recipe.as_dict(),
        "calibration": "none (data-free)" if dataset is None else {
            "source": calibration.source, "num_samples": calibration.num_samples,
            "max_seq_length": calibration.max_seq_length, "tokens_sha256": calibration_digest(dataset),
            "batch_size": batch_size(calibration, device, recipe)},
        "versions": {**versions(LIBRARIES), "pytest-quant": __version__},
        "device": device,
        "calibration_dtype": str(calibration_dtype(device)),
        # float sums run in another order with another thread count: the bytes differ (tests/test_e2e_build.py)
        "threads": _threads() if device == "cpu" else None,
        **({"emulation": emulation()} if emulation() else {}),  # another CPU's code paths: its own checkpoint
        "gpus": gpus,
    }
    label = f"{source.name} {recipe.label} checkpoint"
    entry = store.get_or_create(
        "checkpoints", material,
        lambda out: _quantize(base_path, recipe, calibration, dataset, tokenizer, device, trust_remote_code, out,
                              store.log, gpus, timeout),
        rebuild=rebuild, label=label)
    store.log(f"{label}: {'served from cache' if entry.cached else 'built'} at {entry.path}")
    return Checkpoint(entry.path, base_path, source, recipe, entry.manifest, entry.cached, recipe.scheme)
