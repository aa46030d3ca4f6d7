"""Quantization schemes as data: compressed-tensors' own presets (``PRESET_SCHEMES``), read from the installed
library, so a preset it gains later is a choice with no code; and the seed guides' recipes as the defaults of
their schemes (W4A16 and W8A16: GPTQ; W8A8: SmoothQuant 0.8 + GPTQ).

The guides' names are known without importing compressed-tensors (which imports torch), so the unit tier and an
inert plugin stay light; any other name is looked up in compressed-tensors on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from pytest_quant.infra.errors import QuantUsageError

# The guides' recipes: the algorithm (and SmoothQuant's strength) each of their schemes is built with by default.
GUIDE_DEFAULTS: dict[str, dict[str, Any]] = {
    "W4A16": {"algorithm": "gptq"},
    "W8A16": {"algorithm": "gptq"},
    "W8A8": {"algorithm": "smoothquant+gptq", "smoothing": 0.8},
}
# Algorithms: round-to-nearest (llm-compressor's QuantizationModifier), GPTQ, AWQ then RTN or GPTQ, SmoothQuant + GPTQ.
ALGORITHMS = ("auto", "rtn", "gptq", "awq", "awq+gptq", "smoothquant+gptq")
# Schemes every session asks its backends about (besides its own): what users ship (llm-compressor's tests' list)
COMMON = ("W4A16", "W8A16", "W8A8", "W4A16_ASYM", "FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "NVFP4", "MXFP4A16",
          "W4AFP8")
VLLM_GROUP_SIZES = (128, 64, 32)  # group (and block) sizes vLLM's kernels take, largest first
FIXED_GROUPS = ("tensor_group",)  # NVFP4's group of 16 is its format's, not a knob
SCALE_FORMATS = {"torch.uint8"}  # MX formats: a group of 32 with a shared power-of-two scale, fixed by the format


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme: compressed-tensors' arguments for weights and input activations (JSON-ready) and
    the checkpoint format compressed-tensors saves it in."""
    name: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None = None
    format: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # the guides' recipe, where the scheme is theirs

    @property
    def bits(self) -> int:
        return int(self.weights["num_bits"])

    @property
    def weight_type(self) -> str:
        return str(self.weights.get("type", "int"))

    @property
    def strategy(self) -> str:
        return str(self.weights.get("strategy", "tensor"))

    @property
    def group_size(self) -> int | None:
        """The weight group size, or for a block scheme the block's side (None for per-channel or per-tensor)."""
        block = self.weights.get("block_structure")
        return int(block[0]) if block else self.weights.get("group_size")

    @property
    def weight_only(self) -> bool:
        return self.input_activations is None

    @property
    def static_activations(self) -> bool:
        """Activation scales calibrated on data (FP8 static, NVFP4's global scale), not computed at run time."""
        return self.input_activations is not None and self.input_activations.get("dynamic") is not True

    @property
    def symmetric(self) -> bool:
        return bool(self.weights.get("symmetric", True))

    @property
    def group_fixed(self) -> bool:
        """Whether the format fixes the group (NVFP4: 16, MXFP4: 32), so no other size is possible."""
        return self.strategy in FIXED_GROUPS or self.weights.get("scale_dtype") in SCALE_FORMATS

    def with_group(self, size: int | None) -> "Scheme":
        """The scheme at group (or block) ``size``; None: per channel."""
        weights = dict(self.weights)
        if weights.get("block_structure"):
            weights["block_structure"] = [size, size]
        elif size is None:
            weights.update(strategy="channel", group_size=None)
        else:
            weights.update(strategy="group", group_size=size)
        acts = dict(self.input_activations) if self.input_activations else None
        if acts and acts.get("strategy") == "group" and weights.get("block_structure"):
            acts["group_size"] = size  # FP8_BLOCK: activations in groups of the block's side
        return replace(self, weights=weights, input_activations=acts, format=self.format)

    def config_group(self) -> dict[str, Any]:
        """The scheme as one compressed-tensors config group on every Linear layer."""
        group: dict[str, Any] = {"targets": ["Linear"], "weights": dict(self.weights)}
        if self.input_activations is not None:
            group["input_activations"] = dict(self.input_activations)
        return group


def _dump(args: Any) -> dict[str, Any] | None:
    if args is None:
        return None
    return args.model_dump(mode="json", exclude_none=True)


@cache
def presets() -> dict[str, Scheme]:
    """compressed-tensors' presets (every one that quantizes something), with the format it saves each in."""
    import torch
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    out = {}
    for name, preset in PRESET_SCHEMES.items():
        weights = preset.get("weights")
        if weights is None:
            continue
        scheme = QuantizationScheme(targets=["Linear"], **preset)
        fmt = infer_module_format(torch.nn.Linear, scheme)
        out[name] = Scheme(name, _dump(weights) or {}, _dump(preset.get("input_activations")),
                           getattr(fmt, "value", str(fmt)), dict(GUIDE_DEFAULTS.get(name, {})))
    return out


def names() -> list[str]:
    """Every scheme name: the guides' first, then compressed-tensors' presets."""
    return list(dict.fromkeys([*GUIDE_DEFAULTS, *presets()]))


def known(name: str) -> None:
    """Refuse a name that is no scheme, listing the choices (the guides' names need no import)."""
    if name in GUIDE_DEFAULTS or name in presets():
        return
    raise QuantUsageError(f"unknown scheme {name!r}; choose one of {', '.join(names())} (compressed-tensors' presets)")


def get_scheme(name: str) -> Scheme:
    known(name)
    return presets()[name]


def default_algorithm(name: str) -> str:
    """The guides' algorithm for their schemes; round-to-nearest (llm-compressor's QuantizationModifier) otherwise."""
    return GUIDE_DEFAULTS.get(name, {}).get("algorithm", "rtn")


def needs_data(name: str, algorithm: str, kv_cache: str | None) -> bool:
    """Whether building needs calibration data: every algorithm but RTN does, and so do static activation scales
    and a KV-cache scheme (calibrated scales). Data-free builds skip the calibration set (and are faster)."""
    return algorithm != "rtn" or kv_cache is not None or get_scheme(name).static_activations
