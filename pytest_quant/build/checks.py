"""Checks on a saved checkpoint: what a compressed-tensors checkpoint must look like on disk, and that it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.build.recipes import SCHEMES, RecipeSpec


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


def quantization_config(path: Path) -> dict[str, Any]:
    """The checkpoint's ``quantization_config`` ({} when there is none); a usage error without config.json."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise QuantUsageError(f"{path} has no config.json: not a model checkpoint")
    try:
        return json.loads(cfg.read_text()).get("quantization_config") or {}
    except ValueError as e:
        raise QuantUsageError(f"{cfg} is not valid JSON ({e})") from None


def checkpoint_scheme(path: Path) -> str:
    """The scheme of a compressed-tensors checkpoint, read from its config (W4A16, W8A8, W8A16, or as found)."""
    q = quantization_config(path)
    if q.get("quant_method") != "compressed-tensors":
        raise QuantUsageError(f"{path} is not a compressed-tensors checkpoint (quant_method "
                              f"{q.get('quant_method')!r}); pass a checkpoint saved with save_compressed=True")
    groups = list((q.get("config_groups") or {}).values())
    if not groups:
        raise QuantUsageError(f"{path}: quantization_config has no config_groups")
    weights, acts = groups[0].get("weights") or {}, groups[0].get("input_activations") or {}
    kind = "" if weights.get("type", "int") == "int" else "-" + str(weights.get("type")).upper()
    return f"W{weights.get('num_bits', '?')}A{acts.get('num_bits', 16) if acts else 16}{kind}"


def checkpoint_recipe(path: Path) -> RecipeSpec | None:
    """The recipe a compressed-tensors checkpoint was built with, as far as its ``quantization_config`` says:
    scheme, group size (-1 for per-channel), activation ordering and ignore list (dampening and smoothing are not
    saved). None for a scheme pytest-quant does not build."""
    scheme = checkpoint_scheme(path)
    if scheme not in SCHEMES:
        return None
    q = quantization_config(path)
    weights = (list(q["config_groups"].values())[0].get("weights")) or {}
    group_size = weights.get("group_size") if weights.get("strategy") == "group" else -1
    actorder = weights.get("actorder")
    return RecipeSpec(scheme, group_size=group_size if scheme != "W8A8" else None,
                      actorder=str(actorder) if actorder else None, ignore=tuple(q.get("ignore") or ()))


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
    """Every way the checkpoint at ``path`` differs from a compressed-tensors checkpoint (of ``recipe``)."""
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
    gs = recipe.effective_group_size if recipe else None
    bits = SCHEMES[recipe.scheme]["weight_bits"] if recipe else 4
    if expected_format == "pack-quantized":
        packed = {n[: -len(".weight_packed")]: v for n, v in tensors.items() if n.endswith(".weight_packed")}
        if not packed:
            problems.append("no *.weight_packed tensors")
        for layer, (dtype, shape) in packed.items():
            if dtype != "I32":
                problems.append(f"{layer}.weight_packed is {dtype}, expected I32")
            scale = tensors.get(f"{layer}.weight_scale")
            if scale is None:
                problems.append(f"{layer}.weight_scale is missing")
            elif gs and scale[1][-1] * gs != shape[-1] * 32 // bits:
                problems.append(f"{layer}.weight_scale shape {scale[1]} does not match group size {gs}")
    elif expected_format == "int-quantized":
        weights = {n[: -len(".weight")]: v for n, v in tensors.items()
                   if n.endswith(".weight") and f"{n[:-len('.weight')]}.weight_scale" in tensors}
        if not weights:
            problems.append("no quantized *.weight tensors with a weight_scale")
        for layer, (dtype, shape) in weights.items():
            if dtype != "I8":
                problems.append(f"{layer}.weight is {dtype}, expected I8")
            scale_shape = tensors[f"{layer}.weight_scale"][1]
            if recipe and scale_shape != [shape[0], 1]:
                problems.append(f"{layer}.weight_scale shape {scale_shape}, expected per-channel {[shape[0], 1]}")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        problems.append("no tokenizer saved")
    tok_config = path / "tokenizer_config.json"
    has_template = (path / "chat_template.jinja").is_file() or (
        tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text()))
    if recipe and not has_template:
        problems.append("no chat template saved")
    return problems


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
