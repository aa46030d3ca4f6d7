"""How much of a GPU a vLLM engine asks for: the model's weights, a KV cache sized to the evaluation's batch and room
for activations, as a share of the card. vLLM's default (0.9 of the card, whatever the model) leaves no room for a
second engine: a gate's base and quantized engines, or two pytest-xdist workers, could not share one GPU."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
# KV cache for two scheduler steps of vLLM's offline batch on an H100/H200 (max_num_batched_tokens 16384 in vLLM 0.26
# and 0.32 on cards of 70 GiB and more): lm-eval hands vLLM every request at once, and a prompt's blocks stay while
# the next step is scheduled. Never less than two sequences of max_model_len.
KV_TOKENS = 32768
# Activations of one 16384-token step, the sampler's logits for up to 1024 sequences, the CUDA context and cuBLAS's
# workspace: vLLM's profile run counts them, and the KV cache gets what is left of the share.
OVERHEAD_GIB = 4.0
OVERHEAD_PER_WEIGHT = 0.1
MIN_SHARE, MAX_SHARE = 0.01, 0.9
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


@dataclass(frozen=True)
class MemoryPlan:
    """What an engine asks the GPU for (GiB), and the share of the card that is (vLLM's gpu_memory_utilization)."""
    weights_gib: float
    kv_tokens: int
    kv_gib: float
    kv_bytes: int  # what vLLM's kv_cache_memory_bytes is given: the KV cache no profile of a shared card can shrink
    overhead_gib: float
    total_gib: float
    share: float


def weights_bytes(path: Path) -> int:
    """Bytes of the model's weight files (as stored: compressed checkpoints load about as large on a GPU)."""
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in path.glob(pattern))


def kv_bytes_per_token(config: dict, kv_cache_dtype: str | None) -> int:
    """Bytes one token takes in the KV cache: keys and values of every layer's KV heads."""
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads") or 1
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // heads)
    element = 1 if kv_cache_dtype and kv_cache_dtype.startswith("fp8") else 2
    return 2 * int(text.get("num_hidden_layers", 0)) * int(kv_heads) * int(head_dim) * element


def card_gib() -> float:
    """Memory of the first visible GPU, in GiB (0 where torch sees none)."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else 0.0


def plan(path: Path, max_model_len: int, total_gib: float, kv_cache_dtype: str | None = None) -> MemoryPlan:
    """The share of a ``total_gib`` card the model at ``path`` needs for an evaluation (rounded up, at most 0.9; 0.9
    where the card's size is unknown)."""
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    weights = weights_bytes(path) / GIB
    tokens = max(KV_TOKENS, 2 * max_model_len)
    kv_bytes = kv_bytes_per_token(config, kv_cache_dtype) * tokens
    kv = kv_bytes / GIB
    overhead = OVERHEAD_GIB + OVERHEAD_PER_WEIGHT * weights
    need = weights + kv + overhead
    share = MAX_SHARE if total_gib <= 0 else min(MAX_SHARE, max(MIN_SHARE, -(-need / total_gib * 1000 // 1) / 1000))
    return MemoryPlan(round(weights, 3), tokens, round(kv, 3), kv_bytes, round(overhead, 2), round(total_gib, 1),
                      share)
