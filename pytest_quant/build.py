"""Build a quantized compressed-tensors checkpoint: the guides' steps as one cached function.

load model -> prepare calibration data -> ``oneshot`` with the recipe -> ``save_pretrained(save_compressed=True)``.
"""

from __future__ import annotations

import importlib.metadata
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .calibration import CalibrationSpec, calibration_digest, prepare_calibration
from .distributed import run_distributed_build
from .errors import QuantUsageError
from .models import ModelSource, materialize, resolve_model
from .recipes import RecipeSpec, check_shapes, to_modifiers
from .store import Store

LIBRARIES = ("llmcompressor", "compressed-tensors", "transformers", "torch")


def versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QuantUsageError("--quant-device cuda was asked for but torch sees no CUDA device")
    return device


@dataclass
class Checkpoint:
    path: Path
    base_path: Path
    source: ModelSource
    recipe: RecipeSpec
    manifest: dict[str, Any]
    cached: bool

    @property
    def key(self) -> str:
        return self.manifest["key"]


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


def _quantize(base_path: Path, recipe: RecipeSpec, calib: CalibrationSpec, dataset: Any, tokenizer: Any,
              device: str, trust_remote_code: bool, out: Path, log: Any, gpus: int = 1) -> dict[str, Any]:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    if gpus > 1:
        return {"device": device, **run_distributed_build(gpus, base_path, recipe, calib, out, trust_remote_code, log)}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    log(f"loading {base_path} for {recipe.scheme}")
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype="auto", trust_remote_code=trust_remote_code)
    t1 = time.perf_counter()
    log(f"calibrating {recipe.scheme} on {len(dataset)} samples x <= {calib.max_seq_length} tokens ({device})")
    oneshot(model=model, dataset=dataset, recipe=to_modifiers(recipe), max_seq_length=calib.max_seq_length,
            num_calibration_samples=calib.num_samples, shuffle_calibration_samples=False)
    t2 = time.perf_counter()
    log(f"saving compressed-tensors checkpoint ({recipe.format})")
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    t3 = time.perf_counter()
    return {"device": device, "torch_threads": torch.get_num_threads(), "seconds": {"load": round(t1 - t0, 2), "calibrate": round(t2 - t1, 2),
                                          "save": round(t3 - t2, 2)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def build_checkpoint(model: str, recipe: RecipeSpec, calibration: CalibrationSpec, store: Store,
                     device: str = "auto", rebuild: bool = False, trust_remote_code: bool = False,
                     gpus: int = 1) -> Checkpoint:
    """Quantize ``model`` with ``recipe`` (or serve it from ``store``) and return the checkpoint.

    ``gpus > 1`` runs llm-compressor's distributed oneshot, one torchrun process per GPU.
    """
    if gpus < 1:
        raise QuantUsageError(f"the number of GPUs for a build must be at least 1, got {gpus}")
    source = resolve_model(model)
    base_path, ident = materialize(source, store)
    device = resolve_device(device)
    recipe = check_shapes(_shape_model(base_path, trust_remote_code), recipe)
    tokenizer = load_tokenizer(base_path, trust_remote_code)
    dataset = prepare_calibration(calibration, tokenizer)
    material = {
        "model": ident,
        "recipe": recipe.as_dict(),
        "calibration": {"source": calibration.source, "num_samples": calibration.num_samples,
                        "max_seq_length": calibration.max_seq_length, "tokens_sha256": calibration_digest(dataset)},
        "versions": {**versions(), "pytest-quant": __version__},
        "device": device,
    }
    label = f"{source.name} {recipe.scheme} checkpoint"
    entry = store.get_or_create(
        "checkpoints", material,
        lambda out: _quantize(base_path, recipe, calibration, dataset, tokenizer, device, trust_remote_code, out,
                              store.log, gpus),
        rebuild=rebuild, label=label)
    store.log(f"{label}: {'served from cache' if entry.cached else 'built'} at {entry.path}")
    return Checkpoint(entry.path, base_path, source, recipe, entry.manifest, entry.cached)
