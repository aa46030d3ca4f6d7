"""GPU memory between the models of a session: kept evaluation models closed before in-process GPU work, torch's
cache handed back after it, so that a build, a fidelity check or a vLLM engine starting next finds the memory free."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from pytest_quant.evaluate import lm_runner
from pytest_quant.evaluate.engine_pool import ENGINES


def release_models() -> None:
    """Close every kept evaluation model: vLLM runners and the in-process transformers model."""
    ENGINES.close()
    lm_runner.release()
    free_gpu_cache()


def free_gpu_cache() -> None:
    """Hand memory torch's caching allocator holds back to the GPU, so a vLLM engine starting next finds it free."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


@contextmanager
def gpu_work(device: str) -> Iterator[None]:
    """Around in-process work that puts a model on the GPU: engines closed before, torch's cache freed after."""
    if device == "cuda":
        release_models()
    try:
        yield
    finally:
        if device == "cuda":
            free_gpu_cache()


