"""Canned builds and per-item results for the plugin tier: the plugin's own logic without models.

A pytest plugin (this module): its ``pytest_quant_session_class`` hands pytest-quant a session whose pipeline
steps return canned results. In-process runs pass the module as a plugin object; subprocess runs (xdist workers,
the command-line contract) load it with ``-p fake_pipeline``. Environment: FAKE_VALUES (accuracy per model),
FAKE_LOG (one JSON line per evaluation), FAKE_CRASH, FAKE_BACKEND, FAKE_DEVICE, FAKE_SUPPORT.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.build.models import resolve_model
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.evaluate.backends import Backend, make_backend
from pytest_quant.evaluate.engine import EvaluationFailed
from pytest_quant.evaluate.evaluator import ItemResults
from pytest_quant.infra.hardware import Device
from pytest_quant.session.session import QuantSession


def difficulty(i: str) -> float:
    """The same per-item difficulty for every model: paired answers."""
    return int(hashlib.sha256(str(i).encode()).hexdigest()[:8], 16) / 2**32


def env_json(name: str, default: str) -> Any:
    return json.loads(os.environ.get(name, default))


class FakeSession(QuantSession):
    """A session that builds and evaluates nothing: checkpoints are names, answers follow FAKE_VALUES."""

    def build(self, target: Any) -> Checkpoint:
        return Checkpoint(Path("/nonexistent/" + target.scheme), Path("/nonexistent"), resolve_model(target.model),
                          self.recipe(target.scheme), {"key": "k-" + target.scheme, "seconds": 1.5}, True,
                          target.scheme)

    def check_build(self, case: Any) -> None:  # the real one loads the model's shapes
        return None

    def items(self, target: Any, run: Any, ids: list[str]) -> ItemResults:
        if os.environ.get("FAKE_CRASH"):
            raise EvaluationFailed("vLLM evaluation exited with code -6: RuntimeError: engine core died")
        values = env_json("FAKE_VALUES", '{"base": 0.70, "W4A16": 0.66, "W8A8": 0.50}')
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

    @property
    def backend(self) -> str:
        return os.environ.get("FAKE_BACKEND", "hf")

    @property
    def backend_reason(self) -> str:
        return "fake"

    @property
    def device(self) -> Device:
        return Device(*env_json("FAKE_DEVICE", '["cpu", "x86_64"]'))

    def supported(self, name: str) -> Backend:
        """The backend with FAKE_SUPPORT as vLLM's answer (other backends take no such option)."""
        return make_backend(name, support=env_json("FAKE_SUPPORT", "null"))


@pytest.hookimpl
def pytest_quant_session_class(config: pytest.Config) -> type[QuantSession]:
    return FakeSession
