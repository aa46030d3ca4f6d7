"""Checks on a saved checkpoint: what the guides' output must look like on disk, and that it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .recipes import SCHEMES, RecipeSpec


def _tensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor in the checkpoint's safetensors files, read from headers."""
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                s = st.get_slice(name)
                out[name] = (s.get_dtype(), list(s.get_shape()))
    return out


def checkpoint_problems(path: Path, recipe: RecipeSpec) -> list[str]:
    """Every way the checkpoint at ``path`` differs from a compressed-tensors ``recipe`` checkpoint."""
    problems: list[str] = []
    config = json.loads((path / "config.json").read_text())
    q: dict[str, Any] = config.get("quantization_config") or {}
    if q.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method is {q.get('quant_method')!r}, expected 'compressed-tensors'")
    if q.get("format") != recipe.format:
        problems.append(f"format is {q.get('format')!r}, expected {recipe.format!r}")
    if "lm_head" not in q.get("ignore", []):
        problems.append(f"lm_head is not in ignore: {q.get('ignore')}")
    tensors = _tensors(path)
    if any(n.startswith("lm_head.") and n != "lm_head.weight" for n in tensors):
        problems.append("lm_head has quantization tensors")
    gs = recipe.effective_group_size
    if recipe.format == "pack-quantized":
        packed = {n[: -len(".weight_packed")]: v for n, v in tensors.items() if n.endswith(".weight_packed")}
        if not packed:
            problems.append("no *.weight_packed tensors")
        for layer, (dtype, shape) in packed.items():
            if dtype != "I32":
                problems.append(f"{layer}.weight_packed is {dtype}, expected I32")
            scale = tensors.get(f"{layer}.weight_scale")
            shape_in = tensors.get(f"{layer}.weight_shape")
            if scale is None:
                problems.append(f"{layer}.weight_scale is missing")
            elif shape_in is not None and gs and scale[1][-1] * gs != shape[-1] * 32 // SCHEMES[recipe.scheme]["weight_bits"]:
                problems.append(f"{layer}.weight_scale shape {scale[1]} does not match group size {gs}")
    else:
        weights = {n[: -len(".weight")]: v for n, v in tensors.items()
                   if n.endswith(".weight") and f"{n[:-len('.weight')]}.weight_scale" in tensors}
        if not weights:
            problems.append("no quantized *.weight tensors with a weight_scale")
        for layer, (dtype, shape) in weights.items():
            if dtype != "I8":
                problems.append(f"{layer}.weight is {dtype}, expected I8")
            scale_shape = tensors[f"{layer}.weight_scale"][1]
            if scale_shape != [shape[0], 1]:
                problems.append(f"{layer}.weight_scale shape {scale_shape}, expected per-channel {[shape[0], 1]}")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        problems.append("no tokenizer saved")
    tok_config = path / "tokenizer_config.json"
    has_template = (path / "chat_template.jinja").is_file() or (
        tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text()))
    if not has_template:
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
