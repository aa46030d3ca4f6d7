"""Canned builds and per-item results for the plugin tier: the plugin's own logic without models.

``PATCHES`` replaces the session's pipeline steps. In-process runs apply them with ``monkeypatch`` (undone after
each test); subprocess runs (xdist workers, the CLI contract) load this file as their conftest's ``install()``.
Environment: FAKE_VALUES (accuracy per model), FAKE_LOG (one JSON line per evaluation), FAKE_CRASH, FAKE_BACKEND,
FAKE_DEVICE, FAKE_SUPPORT.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.evaluate.evaluator import EvaluationFailed, ItemResults
from pytest_quant.infra.hardware import Device
from pytest_quant.build.models import resolve_model
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.session.session import QuantSession


def build(self: QuantSession, target: Any) -> Checkpoint:
    return Checkpoint(Path("/nonexistent/" + target.scheme), Path("/nonexistent"), resolve_model(target.model),
                      RecipeSpec(target.scheme), {"key": "k-" + target.scheme, "seconds": 1.5}, True, target.scheme)


def difficulty(i: str) -> float:
    """The same per-item difficulty for every model: paired answers."""
    return int(hashlib.sha256(str(i).encode()).hexdigest()[:8], 16) / 2**32


def items(self: QuantSession, target: Any, run: Any, ids: list[str]) -> ItemResults:
    if os.environ.get("FAKE_CRASH"):
        raise EvaluationFailed("vLLM evaluation exited with code -6: RuntimeError: engine core died")
    values = json.loads(os.environ.get("FAKE_VALUES", '{"base": 0.70, "W4A16": 0.66, "W8A8": 0.50}'))
    name = target.scheme or "base"
    p = values[name] - (0 if run.add_bos_token else values.get("bos_drop_" + name, 0.02))
    if log := os.environ.get("FAKE_LOG"):
        with open(log, "a") as f:
            c = (target.calibration or self.calibration()) if target.scheme else None
            f.write(json.dumps([name, run.task, run.add_bos_token, len(ids),
                                c and [c.num_samples, c.max_seq_length]]) + "\n")
    return ItemResults({i: {"acc": float(difficulty(i) < p), "acc_norm": float(difficulty(i) < p)} for i in ids},
                       {"1": len(ids)} if run.add_bos_token else {"0": len(ids)}, "hf", 0.5,
                       versions={"lm_eval": "x"})


def env_json(name: str, default: str) -> Any:
    return json.loads(os.environ.get(name, default))


PATCHES: dict[str, Any] = {
    "build": build,
    "items": items,
    "check_build": lambda self, case: None,  # the real one loads the model's shapes
    "backend": property(lambda self: os.environ.get("FAKE_BACKEND", "hf")),
    "backend_reason": property(lambda self: "fake"),
    "device": property(lambda self: Device(*env_json("FAKE_DEVICE", '["cpu", "x86_64"]'))),
    "vllm_support": property(lambda self: env_json("FAKE_SUPPORT", "null")),
}


def install(setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    for name, value in PATCHES.items():
        setattr(QuantSession, name, value)
