"""Quantization recipes: the guides' GPTQ W4A16 and SmoothQuant + GPTQ W8A8, with their knobs.

A :class:`RecipeSpec` is plain data (hashable into cache keys, checked without importing
llm-compressor); :func:`to_modifiers` turns it into llm-compressor modifiers and
:func:`check_shapes` refuses, with a clear message, a group size the model's layers cannot take.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pytest_quant.infra.errors import QuantUsageError

# scheme -> (weight bits, activation bits, default weight strategy)
SCHEMES: dict[str, dict[str, Any]] = {
    "W4A16": {"weight_bits": 4, "act_bits": 16, "group_size": 128, "smoothing": None,
              "format": "pack-quantized"},
    "W8A16": {"weight_bits": 8, "act_bits": 16, "group_size": 128, "smoothing": None,
              "format": "pack-quantized"},
    "W8A8": {"weight_bits": 8, "act_bits": 8, "group_size": None, "smoothing": 0.8,
             "format": "int-quantized"},
}
ACTORDERS = ("static", "group", "weight", "none")
VLLM_GROUP_SIZES = (128, 64, 32)  # group sizes vLLM's W4A16 kernels (Marlin, Machete, CPU) take


@dataclass(frozen=True)
class RecipeSpec:
    scheme: str = "W4A16"
    group_size: int | str | None = None  # None: the scheme's default; "auto": largest valid; -1: per channel
    actorder: str | None = None  # None: llm-compressor's default (static)
    dampening_frac: float | None = None  # None: llm-compressor's default (0.01)
    smoothing_strength: float | None = None  # W8A8 only; None: the guide's 0.8
    ignore: tuple[str, ...] = field(default_factory=lambda: ("lm_head",))

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise QuantUsageError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        gs = self.group_size
        if isinstance(gs, str) and gs != "auto":
            try:
                gs = int(gs)
            except ValueError:
                raise QuantUsageError(f"group_size must be a positive integer, -1 or 'auto', got {gs!r}") from None
            object.__setattr__(self, "group_size", gs)
        if isinstance(gs, int) and (gs == 0 or gs < -1):
            raise QuantUsageError(f"group_size must be a positive integer, -1 or 'auto', got {gs}")
        if self.actorder is not None and self.actorder not in ACTORDERS:
            raise QuantUsageError(f"actorder must be one of {', '.join(ACTORDERS)}, got {self.actorder!r}")
        if self.dampening_frac is not None and not 0 < self.dampening_frac < 1:
            raise QuantUsageError(f"dampening_frac must be in (0, 1), got {self.dampening_frac}")
        if self.smoothing_strength is not None:
            if SCHEMES[self.scheme]["smoothing"] is None:
                raise QuantUsageError(f"smoothing_strength applies to W8A8 only, not {self.scheme}")
            if not 0 < self.smoothing_strength < 1:
                raise QuantUsageError(f"smoothing_strength must be in (0, 1), got {self.smoothing_strength}")
        object.__setattr__(self, "ignore", tuple(dict.fromkeys(("lm_head", *self.ignore))))

    @property
    def effective_group_size(self) -> int | None:
        """The group size used (None for per-channel W8A8)."""
        if self.group_size is None:
            return SCHEMES[self.scheme]["group_size"]
        if self.group_size == "auto":
            raise QuantUsageError("group_size 'auto' must be resolved against a model first (check_shapes)")
        return None if self.group_size == -1 else int(self.group_size)

    @property
    def format(self) -> str:
        return SCHEMES[self.scheme]["format"]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ignore": list(self.ignore)}


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def quantized_linears(model: Any, spec: RecipeSpec) -> dict[str, int]:
    """Name -> input columns of every Linear layer the recipe quantizes."""
    import torch

    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not _ignored(name, spec.ignore)}


def check_shapes(model: Any, spec: RecipeSpec) -> RecipeSpec:
    """Return ``spec`` with 'auto' resolved; raise a clear error when the group size cannot work."""
    layers = quantized_linears(model, spec)
    if not layers:
        raise QuantUsageError(f"the recipe quantizes no layer: every Linear layer matches ignore={list(spec.ignore)}")
    columns = sorted(set(layers.values()))
    common = math.gcd(*columns)
    valid = [g for g in VLLM_GROUP_SIZES if common % g == 0]
    if spec.group_size == "auto":
        if SCHEMES[spec.scheme]["group_size"] is None:
            return replace(spec, group_size=None)
        if not valid:
            raise QuantUsageError(f"no group size in {VLLM_GROUP_SIZES} divides every layer's columns "
                                  f"{columns}; use group_size=-1 (per channel)")
        return replace(spec, group_size=valid[0])
    gs = spec.effective_group_size
    if gs is None:
        return spec
    bad = {n: c for n, c in layers.items() if c % gs}
    if bad:
        shown = ", ".join(f"{n} ({c})" for n, c in list(bad.items())[:4]) + (" ..." if len(bad) > 4 else "")
        hint = f"group_size={valid[0]}" if valid else "group_size=-1 (per channel)"
        raise QuantUsageError(
            f"{spec.scheme} with group_size={gs} cannot quantize {len(bad)} layer(s) whose input columns are "
            f"not divisible by {gs}: {shown}. Use {hint} (or --quant-group-size auto to pick the largest "
            "valid one), or add those layers to ignore")
    return spec


def to_modifiers(spec: RecipeSpec) -> list[Any]:
    """llm-compressor modifiers for ``spec`` (the guides' recipe when no knob is set)."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    info = SCHEMES[spec.scheme]
    weights: dict[str, Any] = {"num_bits": info["weight_bits"], "type": "int", "symmetric": True, "dynamic": False}
    gs = spec.effective_group_size
    weights.update({"strategy": "group", "group_size": gs} if gs else {"strategy": "channel"})
    group: dict[str, Any] = {"targets": ["Linear"], "weights": weights}
    if info["act_bits"] == 8:
        group["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True,
                                      "strategy": "token"}
    kwargs: dict[str, Any] = {"config_groups": {"group_0": group}, "ignore": list(spec.ignore)}
    if spec.actorder is not None:
        kwargs["actorder"] = None if spec.actorder == "none" else spec.actorder
    if spec.dampening_frac is not None:
        kwargs["dampening_frac"] = spec.dampening_frac
    modifiers: list[Any] = []
    if info["smoothing"] is not None:
        modifiers.append(SmoothQuantModifier(smoothing_strength=spec.smoothing_strength or info["smoothing"]))
    modifiers.append(GPTQModifier(**kwargs))
    return modifiers
