"""Checks on a saved checkpoint: what a compressed-tensors checkpoint must look like on disk, and that it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.build.recipes import RecipeSpec


def _tensors(path: Path) -> tuple[dict[str, tuple[str, list[int]]], list[str]]:
    """name -> (dtype, shape) of every tensor in the safetensors files (from headers), and unreadable files."""
    from safetensors import safe_open

    out, broken = {}, []
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    s = st.get_slice(name)
                    out[name] = (s.get_dtype(), list(s.get_shape()))
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
            broken.append(f"{f.name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return out, broken


def quantized_layers(path: Path) -> list[str]:
    """The layers of a saved checkpoint that carry a weight scale (quantized ones)."""
    tensors, _ = _tensors(path)
    return [n[: -len(".weight_scale")] for n in tensors if n.endswith(".weight_scale")]


def quantization_config(path: Path) -> dict[str, Any]:
    """The checkpoint's ``quantization_config`` ({} when there is none); a usage error without config.json."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise QuantUsageError(f"{path} has no config.json: not a model checkpoint")
    try:
        return json.loads(cfg.read_text()).get("quantization_config") or {}
    except ValueError as e:
        raise QuantUsageError(f"{cfg} is not valid JSON ({e})") from None


OTHER_FORMATS = {"gptq": "GPTQ (AutoGPTQ/GPTQModel)", "awq": "AWQ (AutoAWQ)", "modelopt": "NVIDIA ModelOpt",
                 "fp8": "vLLM/transformers FP8", "bitsandbytes": "bitsandbytes", "gguf": "GGUF"}
# What tells two schemes apart (group and block sizes, observers and actorder are knobs of one scheme)
SHAPE = ("num_bits", "type", "symmetric", "strategy", "dynamic", "scale_dtype")


def _shape(args: dict[str, Any] | None) -> tuple | None:
    if not args:
        return None
    from compressed_tensors.quantization import QuantizationArgs

    try:
        full = QuantizationArgs(**args).model_dump(mode="json")
    except (ValueError, TypeError, NotImplementedError) as e:
        raise QuantUsageError(f"quantization arguments {args} are not valid compressed-tensors arguments: "
                              f"{' '.join(str(e).split())[:200]}") from None
    return tuple(str(full.get(k)) for k in SHAPE)


def config_group(path: Path) -> dict[str, Any]:
    """The checkpoint's (first) config group: what its Linear layers are quantized with."""
    q = quantization_config(path)
    method = q.get("quant_method")
    if method is None:
        raise QuantUsageError(f"{path} is not a compressed-tensors checkpoint (quant_method None): it has no "
                              "quantization_config; pass a checkpoint saved with save_compressed=True")
    if method != "compressed-tensors":
        other = OTHER_FORMATS.get(str(method).lower(), repr(method))
        raise QuantUsageError(f"{path} is a {other} checkpoint (quant_method {method!r}), not compressed-tensors: "
                              "pytest-quant gates compressed-tensors checkpoints (llm-compressor's, saved with "
                              "save_compressed=True); quantize with llm-compressor, or convert it")
    groups = list((q.get("config_groups") or {}).values())
    if not groups or not groups[0].get("weights"):
        raise QuantUsageError(f"{path}: quantization_config has no config_groups with weights")
    return groups[0]


def checkpoint_scheme(path: Path) -> str:
    """The scheme of a compressed-tensors checkpoint: the compressed-tensors preset its config group matches (the
    guides' names first: symmetric int4 is W4A16, with zero points W4A16_ASYM), else ``custom``."""
    from pytest_quant.build.schemes import names, presets

    group = config_group(path)
    found = (_shape(group.get("weights")), _shape(group.get("input_activations")))
    for name in names():
        preset = presets()[name]
        if (_shape(preset.weights), _shape(preset.input_activations)) == found:
            return name
    return "custom"


def describe_config(path: Path) -> str:
    """The checkpoint's quantization in one phrase (a custom scheme's arguments, its KV cache)."""
    group, q = config_group(path), quantization_config(path)
    w, a = group.get("weights") or {}, group.get("input_activations") or {}
    size = w.get("block_structure") or w.get("group_size")
    text = (f"weights {w.get('type', 'int')}{w.get('num_bits')} {w.get('strategy')}" + (f" {size}" if size else "")
            + ("" if w.get("symmetric", True) else " with zero points")
            + (f", activations {a.get('type', 'int')}{a.get('num_bits')} {a.get('strategy')}"
               f"{' dynamic' if a.get('dynamic') else ' static'}" if a else ", 16-bit activations"))
    kv = q.get("kv_cache_scheme")
    return text + (f", KV cache {kv.get('type', 'int')}{kv.get('num_bits')}" if kv else "")


def checkpoint_recipe(path: Path) -> RecipeSpec | None:
    """The recipe a compressed-tensors checkpoint was built with, as far as its ``quantization_config`` says:
    scheme, group size (-1 for per-channel), activation ordering, ignore list and KV cache (the algorithm,
    dampening and smoothing are not saved). None for a custom scheme."""
    scheme = checkpoint_scheme(path)
    if scheme == "custom":
        return None
    q, weights = quantization_config(path), config_group(path).get("weights") or {}
    block = weights.get("block_structure")
    strategy = weights.get("strategy")
    group_size = block[0] if block else weights.get("group_size") if strategy in ("group", "tensor_group") else -1
    actorder = weights.get("actorder")
    kv = "fp8" if (q.get("kv_cache_scheme") or {}).get("type") == "float" else None
    from pytest_quant.build.schemes import get_scheme

    return RecipeSpec(scheme, group_size=None if get_scheme(scheme).group_size is None else group_size,
                      actorder=str(actorder) if actorder else None, ignore=tuple(q.get("ignore") or ()), kv_cache=kv)


# Options that say how a checkpoint was built: with --quant-checkpoint they are read from the checkpoint itself.
RECIPE_OPTIONS = ("scheme", "group_size", "actorder", "ignore")


def contradictions(recipe: RecipeSpec, given: dict[str, tuple[Any, str]]) -> list[str]:
    """Options the user set (name -> (value, where)) that contradict the checkpoint's own recipe."""
    own = {"scheme": recipe.scheme, "group_size": recipe.effective_group_size or -1, "actorder": recipe.actorder,
           "ignore": sorted(set(recipe.ignore) - {"lm_head"})}
    out = []
    for name, (value, where) in given.items():
        mine = sorted(set(value) - {"lm_head"}) if name == "ignore" else value
        if name == "group_size" and value == "auto":
            continue  # 'auto' asks for whatever fits: the checkpoint's
        if name == "scheme":
            mine = value[0] if len(value) == 1 else value
        if mine != own[name] and not (name == "actorder" and mine in (None, "none") and own[name] in (None, "none")):
            out.append(f"{where} {mine!r} contradicts the checkpoint's {name} {own[name]!r}")
    return out


def checkpoint_problems(path: Path, recipe: RecipeSpec | None = None) -> list[str]:
    """Every way the checkpoint at ``path`` differs from a compressed-tensors checkpoint (of ``recipe``; a recipe
    file's checkpoint is checked against its own saved config)."""
    if recipe is not None and recipe.text is not None:
        recipe = None
    if not (path / "config.json").is_file():
        return ["config.json is missing"]
    try:
        q: dict[str, Any] = quantization_config(path)
    except QuantUsageError as e:
        return [str(e)]
    problems: list[str] = []
    if q.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method is {q.get('quant_method')!r}, expected 'compressed-tensors' (config.json has "
                        f"{'no quantization_config' if not q else 'another quantization method'})")
    expected_format = recipe.format if recipe else q.get("format")
    if recipe and q.get("format") != recipe.format:
        problems.append(f"format is {q.get('format')!r}, expected {recipe.format!r}")
    if "lm_head" not in q.get("ignore", []):
        problems.append(f"lm_head is not in ignore: {q.get('ignore')}")
    tensors, broken = _tensors(path)
    problems += broken
    if not tensors and not broken:
        problems.append("no *.safetensors weights")
    if broken or not tensors:
        return problems
    if any(n.startswith("lm_head.") and n != "lm_head.weight" for n in tensors):
        problems.append("lm_head has quantization tensors")
    try:
        group = recipe.definition().config_group() if recipe else config_group(path)
    except QuantUsageError as e:
        return problems + [str(e)]
    problems += _layer_problems(tensors, group, str(expected_format))
    kv = q.get("kv_cache_scheme")
    if kv and not any(n.endswith(("k_scale", "v_scale")) for n in tensors):
        problems.append("kv_cache_scheme is set but no k_scale/v_scale tensors were saved")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        problems.append("no tokenizer saved")
    tok_config = path / "tokenizer_config.json"
    has_template = (path / "chat_template.jinja").is_file() or (
        tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text()))
    if recipe and not has_template:
        problems.append("no chat template saved")
    return problems


# each format's weight tensor and its dtype in safetensors' names
STORED = {"pack-quantized": ("weight_packed", "I32"), "int-quantized": ("weight", "I8"),
          "float-quantized": ("weight", "F8_E4M3"), "nvfp4-pack-quantized": ("weight_packed", "U8"),
          "mxfp4-pack-quantized": ("weight_packed", "U8"), "mxfp8-quantized": ("weight", "F8_E4M3")}


def _expected_scale(weights: dict[str, Any], rows: int, cols: int) -> list[int] | None:
    """The weight scale's shape for a layer of ``rows`` x ``cols`` (None where no rule is known)."""
    strategy, size = weights.get("strategy"), weights.get("group_size")
    if strategy == "channel":
        return [rows, 1]
    if strategy in ("group", "tensor_group") and size:
        return [rows, -(-cols // int(size))]
    if strategy == "block" and weights.get("block_structure"):
        b = weights["block_structure"]
        return [-(-rows // int(b[0])), -(-cols // int(b[1]))]
    return None


def _layer_problems(tensors: dict[str, tuple[str, list[int]]], group: dict[str, Any], fmt: str) -> list[str]:
    """What the quantized layers' tensors must be for the config group: stored type, scale shape (group, block or
    channel), zero points, FP4 global scales, static activation scales."""
    if fmt not in STORED:
        return []  # a format without a rule here: its config is all there is to check
    suffix, dtype = STORED[fmt]
    weights, acts = group.get("weights") or {}, group.get("input_activations") or {}
    bits = int(weights.get("num_bits", 8))
    layers = {n[: -len(suffix) - 1]: v for n, v in tensors.items()
              if n.endswith("." + suffix) and f"{n[:-len(suffix) - 1]}.weight_scale" in tensors}
    if not layers:
        return [f"no quantized *.{suffix} tensors with a weight_scale (format {fmt})"]
    problems = []
    for layer, (stored, shape) in layers.items():
        if stored != dtype:
            problems.append(f"{layer}.{suffix} is {stored}, expected {dtype}")
        cols = shape[-1] * (32 // bits if stored == "I32" else 8 // bits if stored == "U8" and bits < 8 else 1)
        want, scale = _expected_scale(weights, shape[0], cols), tensors[f"{layer}.weight_scale"][1]
        if want is not None and scale != want:
            problems.append(f"{layer}.weight_scale shape {scale} does not match {weights.get('strategy')} "
                            f"{weights.get('block_structure') or weights.get('group_size') or ''} (expected {want})")
        if not weights.get("symmetric", True) and f"{layer}.weight_zero_point" not in tensors:
            problems.append(f"{layer}.weight_zero_point is missing (asymmetric weights)")
        if fmt == "nvfp4-pack-quantized" and f"{layer}.weight_global_scale" not in tensors:
            problems.append(f"{layer}.weight_global_scale is missing (NVFP4)")
        if acts and acts.get("dynamic") is not True and not any(
                f"{layer}.{n}" in tensors for n in ("input_scale", "input_global_scale")):
            problems.append(f"{layer} has no input scale (static activations)")
    return problems[:20]


def generate(path: Path, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy answer of the checkpoint at ``path`` (transformers, CPU) to one chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
