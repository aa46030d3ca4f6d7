"""One test session's state: resolved options, the store, the device, and memoized pipeline steps.

Everything pytest-specific stays in :mod:`.plugin`; this module calls the plain pipeline functions and
remembers their results so that every test of a session shares one base model, one checkpoint per case and
one model load per evaluation round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_quant.build.checkpoint import Checkpoint, _shape_model, build_checkpoint, given_checkpoint, resolve_device
from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.evaluate.backends import Backend, get_backend, resolve
from pytest_quant.evaluate.evaluator import EvalRun, ItemResults
from pytest_quant.evaluate.gpu_memory import gpu_work
from pytest_quant.infra.hardware import Device, detect_device, limit_threads
from pytest_quant.build.models import as_is, materialize, resolve_model
from pytest_quant.session.ahead import Ahead, evaluate_built
from pytest_quant.session.settings import Settings
from pytest_quant.session.evaluations import Evaluations
from pytest_quant.session.support import SchemeSupport
from pytest_quant.build.recipes import RecipeSpec, parse_recipe
from pytest_quant.build.schemes import default_algorithm
from pytest_quant.infra.shared import SharedTier
from pytest_quant.infra.store import Store, log_info


@dataclass(frozen=True)
class Case:
    """What a checkpoint test runs on: a base model and a scheme, built here or given (``checkpoint``)."""
    model: str
    scheme: str
    checkpoint: str | None = None

    @property
    def id(self) -> str:
        name = resolve_model(self.model).name
        return f"{name}-{Path(self.checkpoint).name}" if self.checkpoint else f"{name}-{self.scheme}"


@dataclass(frozen=True)
class Target:
    """Something to evaluate: a base model (scheme None), a checkpoint to build, or a given checkpoint."""
    model: str
    scheme: str | None = None
    recipe: RecipeSpec | None = None  # None: the session's recipe for ``scheme``
    calibration: CalibrationSpec | None = None  # None: the session's calibration
    checkpoint: str | None = None  # a checkpoint directory built elsewhere
    gpus: tuple[tuple[str, int], ...] = ()  # build_gpus / eval_gpus from a YAML config
    backend: str | None = None  # None: the session's (session.eval_backend picks per scheme)
    engine: tuple[tuple[str, Any], ...] = ()  # lm-eval model arguments (a YAML config's)
    as_is: bool = False  # evaluate ``model`` as it is, quantized or not (vLLM's configs)

    @classmethod
    def of(cls, case: Case, **kwargs: Any) -> "Target":
        return cls(case.model, case.scheme, checkpoint=case.checkpoint, **kwargs)

    @property
    def built(self) -> bool:
        """A checkpoint this session builds (not a base model, a checkpoint given or a model taken as it is)."""
        return bool(self.scheme) and not self.checkpoint and not self.as_is

    @property
    def label(self) -> str:
        if self.as_is:
            return f"{Path(self.model).name} (as is)"
        if self.checkpoint:
            return Path(self.checkpoint).name
        return f"{resolve_model(self.model).name}-{self.scheme or 'base'}"


class QuantSession(SchemeSupport, Evaluations):
    """One session's state; which backend runs each scheme here is :class:`SchemeSupport`'s, how its models are
    evaluated :class:`Evaluations`'."""

    def __init__(self, settings: Settings, cache_dir: Path | None, cache_problem: str | None = None) -> None:
        self.settings = settings
        root = settings.get("cache_dir") or cache_dir
        shared = settings.get("shared_store")
        self._store = Store(Path(root), shared=SharedTier(shared, log_info) if shared else None) if root else None
        self._store_problem = cache_problem
        self.rebuild = bool(settings.get("rebuild"))
        self.trust_remote_code = bool(settings.get("trust_remote_code"))
        self.requested_backend = settings.get("backend")
        self._backend: tuple[Backend, str] | None = None
        self._device: Device | None = None
        self._supported: dict[str, Backend] = {}
        self._choices: dict[str | None, tuple[str, str | None]] = {}
        self._recipes: dict[Path, str] = {}
        self._marked_recipes: dict[str, str] = {}  # scheme name (recipe:<stem>) -> a quant_recipe marker's file
        self._checkpoints: dict[Any, Checkpoint] = {}
        self._build_errors: dict[Any, QuantError] = {}  # a build that failed fails its other tests without a rebuild
        self._bases: dict[str, tuple[Path, Any]] = {}
        self._shapes: dict[str, Any] = {}
        self._checked: set[Case] = set()
        self.planned: dict[Target, dict[EvalRun, set[int]]] = {}
        self._results: dict[tuple[Target, EvalRun], ItemResults] = {}
        self._ahead: Ahead[dict[EvalRun, ItemResults]] = Ahead()

    # -- environment -------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise QuantUsageError(self._store_problem or "no cache directory: pass --quant-cache-dir DIR")
        return self._store

    @property
    def backend(self) -> str:
        """The session's backend, by name: the one asked for, or with ``auto`` the first usable one."""
        if self._backend is None:
            self._backend = resolve(self.requested_backend, self.settings)
        return self._backend[0].name

    def backend_object(self, name: str) -> Backend:
        """Backend ``name`` with this session's options (the session's own object for its backend)."""
        if name == self.backend and self._backend is not None:
            return self._backend[0]
        return get_backend(name).from_settings(self.settings)

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

    def start(self) -> None:
        """The session begins: it says on what device and backend (a timestamp for where the time goes), and on a GPU
        lets the backend begin what its first evaluation will wait for (Backend.prestart)."""
        log_info(f"pytest-quant on {self.device.describe()}, backend {self.backend}")
        if self.device.kind == "cuda":
            self.backend_object(self.backend).prestart(self.store, self.device)

    def cases(self) -> list[Case]:
        """The model x scheme cases, or one per --quant-checkpoint (paired with its base model)."""
        models, checkpoints = self.settings.get("model"), self.settings.get("checkpoint")
        if self.settings.get("recipe") and not checkpoints:
            return [Case(m, self.recipe_file()[0]) for m in models]
        if not checkpoints:
            return [Case(m, s) for m in models for s in self.settings.get("scheme")]
        from pytest_quant.build.checks import checkpoint_scheme

        if len(models) != 1:
            raise QuantUsageError("--quant-checkpoint needs exactly one --quant-model: the base model the "
                                  f"checkpoints were made from (got {len(models)})")
        cases = []
        for c in checkpoints:
            try:
                cases.append(Case(models[0], checkpoint_scheme(Path(c)), str(Path(c).resolve())))
            except QuantUsageError as e:
                raise QuantUsageError(f"--quant-checkpoint {c}: {e}") from None
        return cases

    # -- build -------------------------------------------------------------------------------
    def calibration(self, overrides: dict[str, Any] | None = None) -> CalibrationSpec:
        s, o = self.settings, overrides or {}
        return CalibrationSpec(s.get("calibration", o), s.get("num_samples", o), s.get("max_seq_length", o),
                               s.get("calibration_batch_size", o))

    def recipe_file(self, path: str | None = None) -> tuple[str, str]:
        """(its scheme's name, ``recipe:<file stem>``; its text) of --quant-recipe (or ``path``), checked by
        llm-compressor (it parses, its modifiers exist, one of them quantizes): a usage error if not."""
        found = (path, "recipe") if path else self.settings.source("recipe")
        assert found is not None
        file, where = Path(found[0]).expanduser(), found[1]
        if not file.is_file():
            raise QuantUsageError(f"{where}: recipe file {str(file)!r} does not exist")
        if self.settings.source("scheme") and not path:
            raise QuantUsageError(f"{where}: give --quant-recipe or --quant-scheme, not both (the recipe names its "
                                  "own scheme)")
        if file not in self._recipes:  # read and checked once: every step of the session builds the same text
            text = file.read_text()
            parse_recipe(text, f"{where} {file}")
            self._recipes[file] = text
        return f"recipe:{file.stem}", self._recipes[file]

    def recipe_cases(self, path: Path) -> list[Case]:
        """The cases of a test marked ``quant_recipe(path)``: each model with the recipe file's checkpoint."""
        name, _ = self.recipe_file(str(path))
        other = self._marked_recipes.setdefault(name, str(path))
        if other != str(path):
            raise QuantUsageError(f"quant_recipe: {path} and {other} would both be {name!r}: give recipe files "
                                  "different names")
        return [Case(m, name) for m in self.settings.get("model")]

    def recipe(self, scheme: str, overrides: dict[str, Any] | None = None) -> RecipeSpec:
        s, o = self.settings, overrides or {}
        if scheme.startswith("recipe:"):
            name, text = self.recipe_file(o.get("recipe") or self._marked_recipes.get(scheme))
            return RecipeSpec(scheme=name, text=text)
        algorithm = s.get("algorithm", o)
        smoothing = "smoothquant" in (default_algorithm(scheme) if algorithm == "auto" else algorithm)
        return RecipeSpec(scheme=scheme, group_size=s.get("group_size", o), actorder=s.get("actorder", o),
                          dampening_frac=s.get("dampening_frac", o),
                          smoothing_strength=s.get("smoothing_strength", o) if smoothing else None,
                          ignore=tuple(s.get("ignore", o) or ()), algorithm=algorithm, kv_cache=s.get("kv_cache", o))

    def base(self, model: str) -> tuple[Path, Any]:
        if model not in self._bases:
            self._bases[model] = materialize(resolve_model(model), self.store, rebuild=False)
        return self._bases[model]

    def shape(self, model: str) -> Any:
        """The base model's modules on the meta device (what recipe checks read), made once per model."""
        if model not in self._shapes:
            self._shapes[model] = _shape_model(self.base(model)[0], self.trust_remote_code)
        return self._shapes[model]

    def check_build(self, case: Case) -> None:
        """Refuse, before any test runs, a case whose model cannot be had (an offline hub id) or whose recipe
        cannot quantize it (a group size that divides no layer, an ignore list that leaves no layer, AWQ on batches)."""
        if case.checkpoint or case in self._checked:
            return
        from pytest_quant.build.checkpoint import batch_size
        from pytest_quant.build.recipes import check_shapes

        recipe = self.recipe(case.scheme)
        batch_size(self.calibration(), self.compute, recipe)  # a batch the recipe's algorithm cannot calibrate on
        check_shapes(self.shape(case.model), recipe)
        self._checked.add(case)

    def checkpoint(self, case: Case) -> Checkpoint:
        return self.build(Target.of(case))

    def _build_key(self, target: Target) -> Any:
        return target.model, target.recipe or self.recipe(target.scheme or ""), target.calibration or self.calibration()

    def build(self, target: Target) -> Checkpoint:
        """The checkpoint of ``target``: the given directory, or built (once) with its recipe; its planned
        evaluations start ahead once it is there (session/ahead.py)."""
        assert target.scheme is not None
        if target.checkpoint:
            key: Any = target.checkpoint
            if key not in self._checkpoints:
                self._checkpoints[key] = given_checkpoint(Path(target.checkpoint), target.model, target.scheme)
            return self._checkpoints[key]
        key = self._build_key(target)
        recipe, calibration = key[1], key[2]
        if key in self._build_errors:
            raise self._build_errors[key]
        if key not in self._checkpoints:
            limit_threads()
            try:
                with gpu_work(self.compute):  # kept evaluation models would hold GPU memory the build needs
                    self._checkpoints[key] = build_checkpoint(
                        target.model, recipe, calibration, self.store, device=self.compute, rebuild=self.rebuild,
                        trust_remote_code=self.trust_remote_code,
                        gpus=self.settings.get("build_gpus", dict(target.gpus)),
                        timeout=self.settings.get("build_timeout"))
            except QuantError as e:
                self._build_errors[key] = e
                raise
            evaluate_built(self, key)
        return self._checkpoints[key]

    def path(self, target: Target) -> Path:
        if target.as_is:
            return as_is(resolve_model(target.model, quantized_ok=True), self.store)
        return self.base(target.model)[0] if target.scheme is None else self.build(target).path
