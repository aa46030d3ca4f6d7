"""Building checkpoints: model sources, calibration data, recipes, llm-compressor's oneshot, checks.

``pytest_quant.build`` was one module before the layers: its names (``build_checkpoint``, ``Checkpoint``, ...) are
still handed out here, from :mod:`.checkpoint`.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.checkpoint"), name)
