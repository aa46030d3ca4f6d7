"""One test session's state: resolved options, the store, the device, and memoized pipeline steps.

Everything pytest-specific stays in :mod:`.plugin`; this module calls the plain pipeline functions
and remembers their results so that every test of a session shares one base model, one checkpoint per
scheme and one evaluation per (model, run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import Checkpoint, build_checkpoint, resolve_device
from .calibration import CalibrationSpec
from .evaluate import EvalRun, RunResult, evaluate, resolve_backend
from .fidelity import fidelity
from .hardware import Device, detect_device
from .models import materialize, resolve_model
from .options import Settings
from .recipes import RecipeSpec
from .store import Store, digest


@dataclass(frozen=True)
class Target:
    """Something to evaluate: a base model (scheme None) or a quantized checkpoint."""
    model: str
    scheme: str | None = None
    recipe: RecipeSpec | None = None  # None: the session's recipe for ``scheme``
    calibration: CalibrationSpec | None = None  # None: the session's calibration
    gpus: dict[str, int] | None = field(default=None, compare=False, hash=False)  # build_gpus / eval_gpus

    @property
    def label(self) -> str:
        return f"{resolve_model(self.model).name}-{self.scheme or 'base'}"


def limit_threads() -> None:
    """Give each pytest-xdist worker its share of the cores, so two workers do not oversubscribe two."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


class QuantSession:
    def __init__(self, settings: Settings, cache_dir: Path) -> None:
        self.settings = settings
        self.store = Store(Path(settings.get("cache_dir") or cache_dir))
        self.rebuild = bool(settings.get("rebuild"))
        self.trust_remote_code = bool(settings.get("trust_remote_code"))
        self.vllm_python = settings.get("vllm_python")
        self.requested_backend = settings.get("backend")
        self._backend: tuple[str, str] | None = None
        self._device: Device | None = None
        self._checkpoints: dict[tuple[str, RecipeSpec, CalibrationSpec], Checkpoint] = {}
        self._bases: dict[str, tuple[Path, Any]] = {}
        self.planned: dict[Target, set[EvalRun]] = {}
        self._results: dict[tuple[str, EvalRun], RunResult] = {}

    # -- environment -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        if self._backend is None:
            self._backend = resolve_backend(self.requested_backend, self.vllm_python)
        return self._backend[0]

    @property
    def backend_reason(self) -> str:
        self.backend  # noqa: B018  (resolves it)
        assert self._backend is not None
        return self._backend[1]

    @property
    def device(self) -> Device:
        if self._device is None:
            self._device = detect_device()
        return self._device

    @property
    def compute(self) -> str:
        return resolve_device(self.settings.get("device"))

    # -- build -------------------------------------------------------------------------------
    def calibration(self, overrides: dict[str, Any] | None = None) -> CalibrationSpec:
        s, o = self.settings, overrides or {}
        return CalibrationSpec(s.get("calibration", o), s.get("num_samples", o), s.get("max_seq_length", o))

    def recipe(self, scheme: str, overrides: dict[str, Any] | None = None) -> RecipeSpec:
        s, o = self.settings, overrides or {}
        return RecipeSpec(scheme=scheme, group_size=s.get("group_size", o), actorder=s.get("actorder", o),
                          dampening_frac=s.get("dampening_frac", o),
                          smoothing_strength=s.get("smoothing_strength", o) if scheme == "W8A8" else None,
                          ignore=tuple(s.get("ignore", o) or ()))

    def base(self, model: str) -> tuple[Path, Any]:
        if model not in self._bases:
            self._bases[model] = materialize(resolve_model(model), self.store, rebuild=False)
        return self._bases[model]

    def checkpoint(self, model: str, scheme: str) -> Checkpoint:
        return self.build(Target(model, scheme))

    def build(self, target: Target) -> Checkpoint:
        assert target.scheme is not None
        recipe = target.recipe or self.recipe(target.scheme)
        calibration = target.calibration or self.calibration()
        key = (target.model, recipe, calibration)
        if key not in self._checkpoints:
            limit_threads()
            self._checkpoints[key] = build_checkpoint(
                target.model, recipe, calibration, self.store, device=self.compute, rebuild=self.rebuild,
                trust_remote_code=self.trust_remote_code, gpus=self.settings.get("build_gpus", target.gpus))
        return self._checkpoints[key]

    # -- evaluation --------------------------------------------------------------------------
    def run(self, task: str, marker: dict[str, Any] | None = None, add_bos_token: bool = True,
            apply_chat_template: bool = False) -> EvalRun:
        s = self.settings
        return EvalRun(task, num_fewshot=s.get("num_fewshot", marker), limit=s.get("limit", marker),
                       add_bos_token=add_bos_token, apply_chat_template=apply_chat_template)

    def plan(self, target: Target, runs: list[EvalRun]) -> None:
        """Remember runs a later test will need, so one model load serves them all."""
        self.planned.setdefault(target, set()).update(runs)

    def evaluate(self, target: Target, runs: list[EvalRun], checkpoint: Checkpoint | None = None
                 ) -> dict[EvalRun, RunResult]:
        """Results of ``runs`` on ``target`` (or on ``checkpoint``, a checkpoint given for it).

        Runs planned for the target by other tests are done in the same model load.
        """
        if target.scheme is None:
            path, identity = self.base(target.model)
            identity = {"base": identity}
        else:
            checkpoint = checkpoint or self.build(target)
            path, identity = checkpoint.path, {"checkpoint": checkpoint.key}
        memo = digest(identity)
        wanted = [*runs, *sorted(self.planned.get(target, ()), key=repr)]
        todo = [r for r in dict.fromkeys(wanted) if (memo, r) not in self._results]
        if todo:
            limit_threads()
            results = evaluate(path, identity, todo, self.store, backend=self.backend, vllm_python=self.vllm_python,
                               device=self.compute, timeout=self.settings.get("eval_timeout"),
                               gpus=self.settings.get("eval_gpus", target.gpus), rebuild=self.rebuild,
                               trust_remote_code=self.trust_remote_code, label=target.label)
            self._results.update({(memo, r): v for r, v in results.items()})
        return {r: self._results[(memo, r)] for r in runs}

    def fidelity(self, model: str, scheme: str) -> dict[str, Any]:
        base_path, base_identity = self.base(model)
        ck = self.checkpoint(model, scheme)
        limit_threads()
        return fidelity(base_path, base_identity, ck.path, ck.key, self.store, device=self.compute,
                        rebuild=self.rebuild)
