"""Evaluating models: lm-eval through a backend (vLLM in its own interpreter, transformers), tasks, fidelity.

``pytest_quant.evaluate`` was one module before the layers: its names (``Evaluator``, ``EvalRun``, ...) are still
handed out here, from :mod:`.evaluator`.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.evaluator"), name)
