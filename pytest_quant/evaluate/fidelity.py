"""Fidelity without a data set: how closely a quantized model's next-token distributions follow the base's.

KL(base || quantized) and top-1 agreement per bundled prompt (averaged over its tokens), computed with
transformers (the quantization environment) and cached in the store under both models' content digests.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from pytest_quant.infra.files import atomic_write_text, content_digest
from pytest_quant.infra.store import Store

PROMPTS = Path(__file__).parents[1] / "data" / "prompts.jsonl"


def _load(path: Path, device: str) -> Any:
    """A model in float32; a compressed-tensors checkpoint decompressed at load (its activations still fake-quantized
    where its scheme quantizes them): FP4 formats decompress their weights to bfloat16 whatever the model's dtype,
    which float32 activations cannot meet (seen on CPU and H100 for NVFP4A16, NVFP4, MXFP4A16). On a GPU it is loaded
    there (``device_map``): decompressed on the CPU and moved, its logits came back on the CPU (H100, 2026-12-06)."""
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    quantized = "quantization_config" in json.loads((path / "config.json").read_text())
    extra: dict[str, Any] = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if quantized else {}
    if device != "cpu":
        extra["device_map"] = device
    with warnings.catch_warnings():  # transformers' notice that the checkpoint's config is kept, but for dequantize
        warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **extra)
    return model.float().to(device).eval()


def _measure(base: Path, quantized: Path, num_prompts: int, max_tokens: int, device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    texts = [json.loads(line)["text"] for line in PROMPTS.read_text().splitlines()[:num_prompts]]
    models = [_load(p, device) for p in (base, quantized)]
    kl, top1, tokens = [], [], 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids.to(device)
            logp_base, logp_q = (torch.log_softmax(m(ids).logits[0].float().to(device), -1) for m in models)
            kl.append(torch.sum(logp_base.exp() * (logp_base - logp_q), -1).mean().item())
            top1.append((logp_base.argmax(-1) == logp_q.argmax(-1)).float().mean().item())
            tokens += ids.shape[1]
    return {"kl": sum(kl) / len(kl), "top1_agreement": sum(top1) / len(top1), "per_prompt_kl": kl,
            "per_prompt_top1": top1, "tokens": tokens, "prompts": len(texts)}


def fidelity(base: Path, quantized: Path, store: Store, num_prompts: int = 32, max_tokens: int = 128,
             device: str = "cpu", rebuild: bool = False) -> dict[str, Any]:
    """{'kl', 'top1_agreement', per-prompt values, 'tokens', 'prompts', 'cached'} of ``quantized`` vs ``base``."""
    material = {"base": content_digest(base), "quantized": content_digest(quantized), "prompts": num_prompts,
                "max_tokens": max_tokens, "device": device, "method": "per-prompt mean"}

    def create(out: Path) -> dict[str, Any]:
        result = _measure(base, quantized, num_prompts, max_tokens, device)
        atomic_write_text(out / "fidelity.json", json.dumps(result))
        return {k: v for k, v in result.items() if not k.startswith("per_prompt")}

    entry = store.get_or_create("fidelity", material, create, rebuild=rebuild, label="fidelity measurement")
    return {**json.loads((entry.path / "fidelity.json").read_text()), "cached": entry.cached}
