"""Evaluating models: lm-eval through a backend (vLLM in its own interpreter, transformers), tasks, fidelity.

``pytest_quant.evaluate`` was one module before the layers: its names (``Evaluator``, ``EvalRun``, ``probe_schemes``,
...) are still handed out here, from the modules that hold them now.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


HOLDERS = ("evaluator", "engine", "engine_pool", "gpu_memory", "backends", "backends.vllm", "backends.transformers")


def __getattr__(name: str) -> Any:
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule (``from ... import lm_runner``)
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_"):
        for holder in HOLDERS:
            module = importlib.import_module(f"{__name__}.{holder}")
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(name)
