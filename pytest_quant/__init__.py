"""pytest-quant: quantize with llm-compressor, evaluate with lm-eval (vLLM or transformers), gate in pytest.

Layers, each importing only the ones below it (tests/unit/test_layers.py): :mod:`.plugin` (pytest wiring) ->
:mod:`.session` (settings, the session, running gates) -> :mod:`.gate` (scores, sequential tests, verdicts,
baselines) -> :mod:`.evaluate` (lm-eval through vLLM or transformers, tasks, fidelity); :mod:`.session` ->
:mod:`.build` (model sources, calibration data, recipes, checkpoints); all -> :mod:`.infra` (store, hardware,
errors, versions). The pipeline, each step a plain function usable without pytest: model source -> calibration
data -> recipe -> checkpoint (cached) -> evaluation (cached) -> gate -> report.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import CodeType, ModuleType

__version__ = "0.1.0"

# Module paths before the layers (0.1.0 and earlier), kept working: ``import pytest_quant.store`` and
# ``python -m pytest_quant.power`` still do. pytest_quant.build and pytest_quant.evaluate are packages now;
# they hand out the old modules' names themselves.
MOVED = {
    "errors": "infra.errors", "store": "infra.store", "hardware": "infra.hardware", "machine": "infra.machine",
    "progress": "infra.progress", "models": "build.models", "calibration": "build.calibration",
    "recipes": "build.recipes", "batching": "build.batching", "distributed": "build.distributed",
    "checks": "build.checks", "lm_runner": "evaluate.lm_runner", "tasks": "evaluate.tasks",
    "fidelity": "evaluate.fidelity", "stats": "gate.stats", "gates": "gate.scores", "baseline": "gate.baseline",
    "power": "gate.power", "options": "session.settings", "gating": "session.gate_runs", "markers": "session.markers",
    "yaml_items": "plugin.yaml_items", "report": "plugin.report", "summary": "plugin.summary",
    "html_extras": "plugin.html_extras", "stash": "plugin.stash", "rows": "plugin.rows",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves a module path of before the layers to the module itself (the same object, not a copy)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, old = name.partition(".")
        if prefix != __name__ or old not in MOVED:
            return None
        file = f"{__path__[0]}/{MOVED[old].replace('.', '/')}.py"
        return importlib.util.spec_from_loader(name, self, origin=file)  # python -m's sys.argv[0]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")
        self._spec = module.__spec__  # importlib sets the alias's spec on the module next; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing runs: the module already ran under its new path."""
        module.__spec__ = self._spec

    def get_code(self, name: str) -> CodeType | None:  # for python -m
        new = f"{__name__}.{MOVED[name.partition('.')[2]]}"
        return importlib.util.find_spec(new).loader.get_code(new)  # type: ignore[union-attr]


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.append(_OldPaths())
