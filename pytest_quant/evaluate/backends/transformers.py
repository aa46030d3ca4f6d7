"""transformers as an evaluation backend: lm-eval's ``hf`` model in this process (compressed-tensors decompresses
the checkpoint in torch), the fallback where vLLM has no kernel for a scheme."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from pytest_quant.evaluate import lm_runner
from pytest_quant.evaluate.backends.base import Backend
from pytest_quant.evaluate.engine_pool import ENGINES
from pytest_quant.infra.machine import cpu_dtype
from pytest_quant.infra.versions import versions


def _versions() -> dict[str, str]:
    return {"lm_eval": versions(("lm_eval",))["lm_eval"], **versions(("transformers", "torch"))}


VLLM_ONLY = ("enforce_eager", "kv_cache_dtype", "attention_backend", "max_model_len", "gpu_memory_utilization")


@dataclass(frozen=True)
class TransformersBackend(Backend):
    """transformers (lm-eval's ``hf`` model) in this process; the model stays loaded for the next request."""
    name: ClassVar[str] = "hf"
    title: ClassVar[str] = "transformers"
    cannot: dict[str, str] = field(default_factory=dict, compare=False)  # scheme -> why (for_device)

    def for_device(self, store: Any, device: Any, schemes: dict[str, dict[str, Any]]) -> "TransformersBackend":
        """transformers runs what compressed-tensors can decompress in torch: a scheme whose format has no
        compressor in the installed compressed-tensors cannot run."""
        try:
            from compressed_tensors.compressors import BaseCompressor
        except ImportError:
            return self
        cannot = {}
        for name, s in schemes.items():
            try:
                BaseCompressor.get_value_from_registry(str(s.get("format")))
            except (KeyError, ValueError):
                cannot[name] = (f"{name}: compressed-tensors {versions(('compressed-tensors',))['compressed-tensors']} "
                                f"cannot decompress format {s.get('format')!r} in torch, which transformers needs")
        return replace(self, cannot=cannot)

    def supports(self, scheme: str | None, device: Any) -> str | None:
        return self.cannot.get(scheme or "")

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"pretrained": str(path), "device": "cuda" if device == "cuda" else "cpu",
                                "batch_size": 8, "dtype": "auto" if device == "cuda" else cpu_dtype()}
        if gpus > 1:
            args["parallelize"] = True
        if "max_model_len" in engine:
            engine["max_length"] = engine.pop("max_model_len")
        for key in VLLM_ONLY:
            engine.pop(key, None)
        return args

    def versions(self) -> dict[str, str]:
        return _versions()

    def answer(self, request: dict[str, Any], env: dict[str, str], device: str, timeout: float,
               log: Callable[[str], None]) -> dict[str, Any]:
        if device == "cuda":
            ENGINES.close()  # the transformers model needs the memory vLLM engines hold
        return {**lm_runner.run(request, keep=True, progress=log), "kernels": []}
