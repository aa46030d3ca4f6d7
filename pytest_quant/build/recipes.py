"""Quantization recipes: a scheme (build/schemes.py: compressed-tensors' presets) with an algorithm and knobs; the
guides' GPTQ W4A16 and SmoothQuant + GPTQ W8A8 by default.

A :class:`RecipeSpec` is plain data (hashable into cache keys, checked without importing llm-compressor);
:func:`to_modifiers` turns it into llm-compressor modifiers and :func:`check_shapes` resolves and checks the group
or block size against the model's layers, refusing with a clear message a size they cannot take.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pytest_quant.build.schemes import (ALGORITHMS, GUIDE_DEFAULTS, VLLM_GROUP_SIZES, Scheme, default_algorithm,
                                        get_scheme, known)
from pytest_quant.infra.errors import QuantUsageError

ACTORDERS = ("static", "group", "weight", "none")
KV_CACHE = {"fp8": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}}


@dataclass(frozen=True)
class RecipeSpec:
    scheme: str = "W4A16"
    group_size: int | str | None = None  # None: the scheme's default; "auto": largest valid; -1: per channel
    actorder: str | None = None  # None: llm-compressor's default (static)
    dampening_frac: float | None = None  # None: llm-compressor's default (0.01)
    smoothing_strength: float | None = None  # SmoothQuant only; None: the guide's 0.8
    ignore: tuple[str, ...] = field(default_factory=lambda: ("lm_head",))
    algorithm: str = "auto"  # auto: the guides' for their schemes, round-to-nearest for the others
    kv_cache: str | None = None  # "fp8": an FP8 KV cache with calibrated scales (kv_cache_scheme)
    text: str | None = None  # a user's llm-compressor recipe (YAML), run as written; ``scheme`` then names it

    def __post_init__(self) -> None:
        if self.text is not None:
            return  # the recipe says it all; its modifiers are checked by parse_recipe
        known(self.scheme)
        gs = self.group_size
        if isinstance(gs, str) and gs != "auto":
            try:
                gs = int(gs)
            except ValueError:
                raise QuantUsageError(f"group_size must be a positive integer, -1 or 'auto', got {gs!r}") from None
            object.__setattr__(self, "group_size", gs)
        if isinstance(gs, int) and (gs == 0 or gs < -1):
            raise QuantUsageError(f"group_size must be a positive integer, -1 or 'auto', got {gs}")
        if self.algorithm not in ALGORITHMS:
            raise QuantUsageError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE:
            raise QuantUsageError(f"kv_cache must be one of {', '.join(KV_CACHE)}, got {self.kv_cache!r}")
        if self.actorder is not None and self.actorder not in ACTORDERS:
            raise QuantUsageError(f"actorder must be one of {', '.join(ACTORDERS)}, got {self.actorder!r}")
        if self.dampening_frac is not None and not 0 < self.dampening_frac < 1:
            raise QuantUsageError(f"dampening_frac must be in (0, 1), got {self.dampening_frac}")
        if self.smoothing_strength is not None:
            if "smoothquant" not in self.method:
                raise QuantUsageError(f"smoothing_strength applies to SmoothQuant (W8A8's default, or --quant-algorithm "
                                      f"smoothquant+gptq), not {self.scheme} with {self.method}")
            if not 0 < self.smoothing_strength < 1:
                raise QuantUsageError(f"smoothing_strength must be in (0, 1), got {self.smoothing_strength}")
        object.__setattr__(self, "ignore", tuple(dict.fromkeys(("lm_head", *self.ignore))))

    @property
    def method(self) -> str:
        """The algorithm that runs: the one asked for, or the scheme's default (a recipe file: its own)."""
        if self.text is not None:
            return "recipe"
        return default_algorithm(self.scheme) if self.algorithm == "auto" else self.algorithm

    @property
    def label(self) -> str:
        """The scheme, with what was added to it: ``W4A16`` (its default algorithm), ``W4A16+awq``, ``W4A16+kv-fp8``."""
        if self.text is not None:
            return self.scheme
        extra = [self.method] if self.method != default_algorithm(self.scheme) else []
        extra += [f"kv-{self.kv_cache}"] if self.kv_cache else []
        return "+".join([self.scheme, *extra])

    def definition(self) -> Scheme:
        """The scheme at this recipe's group size (the preset's where none is set)."""
        scheme = get_scheme(self.scheme)
        if self.group_size is None:
            return scheme
        return scheme.with_group(self.effective_group_size)

    @property
    def effective_group_size(self) -> int | None:
        """The group (or block) size used (None for per-channel or per-tensor weights, and for a recipe file)."""
        if self.text is not None:
            return None
        if self.group_size is None:
            return get_scheme(self.scheme).group_size
        if self.group_size == "auto":
            raise QuantUsageError("group_size 'auto' must be resolved against a model first (check_shapes)")
        return None if self.group_size == -1 else int(self.group_size)

    @property
    def format(self) -> str | None:
        """The checkpoint format compressed-tensors saves the scheme in (None for a recipe file: see the checkpoint)."""
        return None if self.text is not None else get_scheme(self.scheme).format

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


def check_shapes(model: Any, spec: RecipeSpec) -> RecipeSpec:
    """Return ``spec`` with 'auto' resolved; raise a clear error, naming the layers, when the group or block size
    cannot work (a block must divide both dimensions of every layer, a group the input columns)."""
    import torch

    if spec.text is not None:
        return spec  # a recipe file names its own targets and sizes; the saved checkpoint is checked instead
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not _ignored(name, spec.ignore)}
    if not layers:
        raise QuantUsageError(f"the recipe quantizes no layer: every Linear layer matches ignore={list(spec.ignore)}")
    scheme = get_scheme(spec.scheme)
    block = bool(scheme.weights.get("block_structure"))
    dims = {n: (m.in_features, m.out_features) if block else (m.in_features,) for n, m in layers.items()}
    what = "block" if block else "group"
    common = math.gcd(*(d for ds in dims.values() for d in ds))
    if scheme.group_size is None and spec.group_size in (None, "auto", -1):
        return replace(spec, group_size=None) if spec.group_size == "auto" else spec
    if scheme.group_fixed and spec.group_size not in (None, "auto", scheme.group_size):
        raise QuantUsageError(f"{spec.scheme}'s group size is {scheme.group_size}, fixed by its format; drop "
                              f"--quant-group-size {spec.group_size} (or choose another scheme)")
    valid = [g for g in ((scheme.group_size,) if scheme.group_fixed else VLLM_GROUP_SIZES) if common % g == 0]
    if spec.group_size == "auto":
        if scheme.group_fixed and valid:
            return replace(spec, group_size=None)
        if not valid:
            raise QuantUsageError(f"no {what} size in {VLLM_GROUP_SIZES} divides every layer's "
                                  f"{'dimensions' if block else 'columns'} {sorted(set(d for ds in dims.values() for d in ds))}"
                                  + ("" if block or scheme.group_fixed else "; use group_size=-1 (per channel)"))
        return replace(spec, group_size=valid[0])
    gs = spec.effective_group_size
    if gs is None:
        return spec
    bad = {n: d for n, d in dims.items() if any(x % gs for x in d)}
    if bad:
        shown = ", ".join(f"{n} ({'x'.join(map(str, d))})" for n, d in list(bad.items())[:4]) + (
            " ..." if len(bad) > 4 else "")
        hint = (f"group_size={valid[0]}" if valid else "group_size=-1 (per channel)" if not (block or scheme.group_fixed)
                else "another scheme")
        raise QuantUsageError(
            f"{spec.scheme} with {what}_size={gs} cannot quantize {len(bad)} layer(s) whose "
            f"{'dimensions' if block else 'input columns'} are not divisible by {gs}: {shown}. Use {hint} (or "
            "--quant-group-size auto to pick the largest valid one), or add those layers to ignore")
    return spec


def parse_recipe(text: str, where: str) -> list[str]:
    """The modifiers of an llm-compressor recipe (YAML), parsed by llm-compressor itself: a recipe that does not
    parse, names an unknown modifier or quantizes nothing (no quantization modifier) is a usage error naming
    ``where``."""
    from llmcompressor.modifiers.quantization.quantization.mixin import QuantizationMixin
    from llmcompressor.recipe import Recipe

    try:
        recipe = Recipe.create_instance(text)
    except Exception as e:  # llm-compressor raises ValueError, yaml's and pydantic's errors for a bad recipe
        from pytest_quant.infra.exits import innermost

        raise QuantUsageError(f"{where}: llm-compressor cannot read it as a recipe: {innermost(e)[:300]}") from None
    modifiers = list(recipe.modifiers)
    if not any(isinstance(m, QuantizationMixin) for m in modifiers):
        raise QuantUsageError(f"{where}: the recipe quantizes nothing: it has no quantization modifier "
                              f"(QuantizationModifier, GPTQModifier, ...), only {[type(m).__name__ for m in modifiers]}")
    return [type(m).__name__ for m in modifiers]


def to_modifiers(spec: RecipeSpec) -> list[Any] | str:
    """llm-compressor modifiers for ``spec``: the scheme as one config group, by the recipe's algorithm (the
    guides' recipe when no knob is set); a recipe file's own text, as written."""
    if spec.text is not None:
        return spec.text
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    scheme = spec.definition()
    kwargs: dict[str, Any] = {"config_groups": {"group_0": scheme.config_group()}, "ignore": list(spec.ignore)}
    if spec.kv_cache is not None:
        kwargs["kv_cache_scheme"] = KV_CACHE[spec.kv_cache]
    method = spec.method
    modifiers: list[Any] = []
    if method == "smoothquant+gptq":
        modifiers.append(SmoothQuantModifier(
            smoothing_strength=spec.smoothing_strength or GUIDE_DEFAULTS["W8A8"]["smoothing"]))
    if method.startswith("awq"):
        modifiers.append(AWQModifier())  # scales channels; the quantization modifier after it quantizes
    if method.endswith("gptq"):
        if spec.actorder is not None:
            kwargs["actorder"] = None if spec.actorder == "none" else spec.actorder
        if spec.dampening_frac is not None:
            kwargs["dampening_frac"] = spec.dampening_frac
        modifiers.append(GPTQModifier(**kwargs))
    else:
        modifiers.append(QuantizationModifier(**kwargs))
    return modifiers
