"""Starting pytest-quant in a run: the session made on first need (options resolved and validated, the vLLM
interpreter probed), every user-given value checked before collection, and a refusal turned into exit 4 with one
line and an ERROR row in the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from pytest_quant.build.calibration import check_jsonl
from pytest_quant.build.checks import RECIPE_OPTIONS, checkpoint_problems, checkpoint_recipe, contradictions
from pytest_quant.build.models import resolve_model
from pytest_quant.evaluate.tasks import check_metric, primary_metric
from pytest_quant.gate.baseline import Baseline
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.infra.machine import signature
from pytest_quant.plugin import html_extras
from pytest_quant.plugin.report import write_report
from pytest_quant.plugin.rows import RowCollector, error_row
from pytest_quant.plugin.stash import BASELINE, COLLECTOR, REFUSED, SESSION
from pytest_quant.plugin.xdist_compat import assign_worker_gpus
from pytest_quant.session.session import QuantSession
from pytest_quant.session.settings import Settings


def _cache_dir(config: pytest.Config) -> tuple[Path | None, str | None]:
    """pytest's cache directory for the store, or why there is none."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None, ("pytest's cache provider is disabled (-p no:cacheprovider), so pytest-quant has nowhere to "
                      "keep checkpoints: pass --quant-cache-dir DIR (or set QUANT_CACHE_DIR)")
    return Path(str(cache.mkdir("quant"))), None


def validate(settings: Settings, qs: QuantSession, config: pytest.Config) -> None:
    """Every user-given value checked before collection (each option's type when the settings were made): a bad one
    is a usage error (exit 4), one line."""
    for scheme in settings.get("scheme"):
        qs.recipe(scheme)  # unknown scheme, bad group size, actorder, ...
    if settings.get("recipe"):
        qs.recipe_file()  # exists, parses, names known modifiers, quantizes something
    for model in settings.get("model"):
        resolve_model(model)
    for case in qs.cases():  # --quant-checkpoint directories: compressed-tensors, readable, one base model
        if case.checkpoint:
            problems = checkpoint_problems(Path(case.checkpoint))
            if problems:
                raise QuantUsageError(f"--quant-checkpoint {case.checkpoint} cannot be evaluated: {problems[0]}"
                                      + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
            recipe = checkpoint_recipe(Path(case.checkpoint))
            given = {n: (settings.get(n), found[1]) for n in RECIPE_OPTIONS if (found := settings.source(n))}
            clash = contradictions(recipe, given) if recipe else []
            if clash:
                raise QuantUsageError(f"--quant-checkpoint {case.checkpoint}: {clash[0]}; the checkpoint's own "
                                      "recipe is used, drop the option")
    qs.calibration()
    cache = settings.source("cache_dir")
    if cache and Path(cache[0]).exists() and not Path(cache[0]).is_dir():
        raise QuantUsageError(f"{cache[1]}: {cache[0]!r} exists and is not a directory; point it at a directory")
    for name in ("report", "save_baseline", "summary"):
        found = settings.source(name)
        if found and not Path(found[0]).resolve().parent.is_dir():
            raise QuantUsageError(f"{found[1]}: the directory of {found[0]!r} does not exist")
    calibration = settings.get("calibration")
    if calibration != "bundled" and Path(calibration).suffix in {".jsonl", ".json", ".parquet"}:
        path = Path(calibration).expanduser()
        if not path.is_file():
            raise QuantUsageError(f"calibration file {calibration!r} does not exist")
        if path.suffix == ".jsonl":
            check_jsonl(path)
    for task in settings.get("task"):
        check_metric(task, settings.get("metric") or primary_metric(task))
    if settings.get("device") == "cuda":
        qs.compute  # noqa: B018  (torch must see a CUDA device)
    qs.backend  # noqa: B018  (a configured vLLM interpreter must work; --quant-backend vllm needs one)
    baseline = settings.get("baseline")
    config.stash[BASELINE] = Baseline.load(baseline) if baseline else None
    target = settings.get("save_baseline")
    if target and Path(target).exists() and not settings.get("overwrite_baseline") \
            and not hasattr(config, "workerinput"):
        raise QuantUsageError(f"baseline file {target} exists; pass --quant-overwrite-baseline to update it")


def activate(config: pytest.Config) -> QuantSession:
    """The session, started (options resolved and validated, the vLLM interpreter probed) on first need. A refusal
    is remembered, so that collection can stop the run with it (refuse) and the report says why."""
    if SESSION in config.stash:
        return config.stash[SESSION]
    if REFUSED in config.stash:
        raise config.stash[REFUSED]
    try:
        settings = Settings.from_pytest(config)
        session_class = config.hook.pytest_quant_session_class(config=config) or QuantSession
        qs = session_class(settings, *_cache_dir(config))
        validate(settings, qs, config)
    except QuantError as e:
        config.stash[REFUSED] = e
        _report_refusal(config, str(e))
        raise
    config.stash[SESSION] = qs
    assign_worker_gpus(config)  # before anything in this worker initializes CUDA
    config.stash[COLLECTOR] = RowCollector()
    config.pluginmanager.register(config.stash[COLLECTOR], "pytest-quant-rows")
    html_extras.register(config)
    return qs


def started(config: pytest.Config) -> QuantSession | None:
    """The session if this run needs one: started now, or None when it failed to start (collection refuses)."""
    try:
        return activate(config)
    except QuantError:
        return None


def _report_refusal(config: pytest.Config, reason: str) -> None:
    """A run refused at its start still writes the JSON report it was asked for: one ERROR row, passed false,
    so a CI step that reads the report finds why (a report path that is itself the bad value is skipped)."""
    path = config.getoption("quant_report") or os.environ.get("QUANT_REPORT") or config.getini("quant_report")
    if not path or hasattr(config, "workerinput") or not Path(path).resolve().parent.is_dir():
        return  # no report asked for, or its directory is missing (the refusal may be about that): nothing created
    try:
        write_report(path, [error_row("pytest-quant", {}, f"refused: {reason}")], ["pytest-quant"],
                     pytest.ExitCode.USAGE_ERROR, {"machine": signature()})
    except OSError:
        pass


def refuse(config: pytest.Config, reason: str, row: bool = True) -> NoReturn:
    """Stop a run refused after its start (collection): an ERROR row for the report, then a usage error (exit 4)."""
    if row:
        config.stash[COLLECTOR].rows.append(error_row("pytest-quant", {}, f"refused: {reason}"))
    raise pytest.UsageError(f"pytest-quant: {reason}") from None


