"""pytest wiring: options, fixtures, parametrization, markers, skips, reports. Logic lives elsewhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, NoReturn

import pytest

from pytest_quant.session import gate_runs

from pytest_quant.plugin import html_extras
from pytest_quant.gate.baseline import Baseline, save_baseline
from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.build.calibration import check_jsonl
from pytest_quant.build.checks import RECIPE_OPTIONS, checkpoint_problems, checkpoint_recipe, contradictions
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.infra.hardware import visible_gpus, why_skip, worker_gpus
from pytest_quant.infra.machine import describe, signature
from pytest_quant.session.markers import MARKERS, parse_markers
from pytest_quant.build.models import resolve_model
from pytest_quant.session.settings import Settings, add_options, asked
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.plugin.report import passed, table, write_report, write_summary
from pytest_quant.plugin.summary import flip_lines
from pytest_quant.plugin.rows import RowCollector, conclude, error_row, mark_quant_item
from pytest_quant.session.session import Case, QuantSession
from pytest_quant.plugin.stash import BASELINE, COLLECTOR, PLANS, REFUSED, SESSION, SPECS
from pytest_quant.evaluate.tasks import check_metric, primary_metric

CASE_FIXTURES = {"quant_case", "quantized_checkpoint", "quant_scheme", "quant_recipe"}
MODEL_FIXTURES = {"quant_model_id", "quant_base_model", "calibration_dataset"}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_quant.plugin import hookspec

    pluginmanager.add_hookspecs(hookspec)


def _cache_dir(config: pytest.Config) -> tuple[Path | None, str | None]:
    """pytest's cache directory for the store, or why there is none."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None, ("pytest's cache provider is disabled (-p no:cacheprovider), so pytest-quant has nowhere to "
                      "keep checkpoints: pass --quant-cache-dir DIR (or set QUANT_CACHE_DIR)")
    return Path(str(cache.mkdir("quant"))), None


def _validate(settings: Settings, qs: QuantSession, config: pytest.Config) -> None:
    """Every user-given value checked before collection (each option's type when the settings were made): a bad one
    is a usage error (exit 4), one line."""
    for scheme in settings.get("scheme"):
        qs.recipe(scheme)  # unknown scheme, bad group size, actorder, ...
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


def _assign_worker_gpus(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its own GPUs (CUDA_VISIBLE_DEVICES), unless the user set them."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    gpus = worker_gpus(int(workerinput["workerid"][2:]), int(workerinput["workercount"]), visible_gpus())
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; start the session only when the command line or ini names a quant option. Otherwise
    pytest-quant stays inert until a test uses its fixtures or markers or a quant_*.yaml is collected (_activate):
    a project that merely has it installed gets no probe and no QUANT_* validation."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("help", False) or config.getoption("version", False):
        return
    if asked(config):
        try:
            _activate(config)
        except QuantError as e:
            raise pytest.UsageError(f"pytest-quant: {e}") from None


def _activate(config: pytest.Config) -> QuantSession:
    """The session, started (options resolved and validated, the vLLM interpreter probed) on first need. A refusal
    is remembered, so that collection can stop the run with it (_refuse) and the report says why."""
    if SESSION in config.stash:
        return config.stash[SESSION]
    if REFUSED in config.stash:
        raise config.stash[REFUSED]
    try:
        settings = Settings.from_pytest(config)
        session_class = config.hook.pytest_quant_session_class(config=config) or QuantSession
        qs = session_class(settings, *_cache_dir(config))
        _validate(settings, qs, config)
    except QuantError as e:
        config.stash[REFUSED] = e
        _report_refusal(config, str(e))
        raise
    config.stash[SESSION] = qs
    _assign_worker_gpus(config)  # before anything in this worker initializes CUDA
    config.stash[COLLECTOR] = RowCollector()
    config.pluginmanager.register(config.stash[COLLECTOR], "pytest-quant-rows")
    html_extras.register(config)
    return qs


def _started(config: pytest.Config) -> QuantSession | None:
    """The session if this run needs one: started now, or None when it failed to start (collection refuses)."""
    try:
        return _activate(config)
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


def _refuse(config: pytest.Config, reason: str, row: bool = True) -> NoReturn:
    """Stop a run refused after its start (collection): an ERROR row for the report, then a usage error (exit 4)."""
    if row:
        config.stash[COLLECTOR].rows.append(error_row("pytest-quant", {}, f"refused: {reason}"))
    raise pytest.UsageError(f"pytest-quant: {reason}") from None


def _session(config: pytest.Config) -> QuantSession:
    return config.stash[SESSION]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = set(metafunc.fixturenames)
    if not names & (CASE_FIXTURES | MODEL_FIXTURES) or (session := _started(metafunc.config)) is None:
        return
    if names & CASE_FIXTURES:
        cases = session.cases()
        metafunc.parametrize("quant_case", cases, ids=[c.id for c in cases], indirect=True, scope="session")
    else:
        models = session.settings.get("model")
        metafunc.parametrize("quant_model_id", models, ids=[resolve_model(m).name for m in models], indirect=True,
                             scope="session")


def _case(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("quant_case") if callspec else None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist, one group per checkpoint (--dist loadgroup: built once, one engine per checkpoint).
    Marked as items are collected: xdist reads the groups in its own collection_modifyitems, before ours."""
    case = _case(item)
    if case is not None and item.config.pluginmanager.hasplugin("xdist"):
        item.add_marker(pytest.mark.xdist_group(case.id))


def _group_in_node_id(item: pytest.Item, group: str) -> None:
    """xdist's loadgroup sends the group to the scheduler as a node-id suffix (``id@group``), set by assigning
    ``item._nodeid``; pytest 9.2 keeps node ids in ``item._id`` and ignores it, so tests are scheduled one by one
    (pytest-xdist#1386; seen on two H100s: both checkpoints on one worker). Set the suffix where it is missing."""
    if not getattr(item.config.option, "loadgroup", False) or item.nodeid.endswith(f"@{group}"):
        return
    node_id = getattr(item, "_id", None)
    if node_id is not None and hasattr(node_id, "parse"):
        item._id = type(node_id).parse(f"{item.nodeid}@{group}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION not in config.stash and REFUSED not in config.stash and \
            not any(item.get_closest_marker(name) for item in items for name in MARKERS):
        return  # not asked: inert
    try:
        qs = _activate(config)  # a refusal remembered from collection is raised again here
    except QuantError as e:
        _refuse(config, str(e), row=False)  # the report already holds the refusal
    for item in items:
        case = _case(item)
        try:
            specs = item.stash[SPECS] = parse_markers(item)
        except QuantError as e:
            _refuse(config, f"{item.nodeid}: {e}")
        if (specs["quant_accuracy"] or specs["quant_bos"]) and case is None:
            _refuse(config, f"{item.nodeid}: quant_accuracy/quant_bos need the test to use the quantized_checkpoint "
                            "fixture (it picks the model and scheme)")
        quant = case is not None or hasattr(item, "quant_check") or any(specs.values())
        if not quant:
            continue
        if case is not None or hasattr(item, "quant_check"):
            try:
                qs.store  # noqa: B018  (fail collection, not every test, when there is nowhere to keep builds)
            except QuantError as e:
                _refuse(config, str(e))
        info = {"model": case.model if case else getattr(item, "quant_model", "-"),
                "scheme": case.scheme if case else getattr(item, "quant_scheme", "-")}
        mark_quant_item(item, info)
        if case is not None:
            _group_in_node_id(item, case.id)
            gpus = max(qs.settings.get("build_gpus"), qs.settings.get("eval_gpus"))
            reason = why_skip(qs.device, qs.supported(qs.eval_backend(case.scheme)), qs.backend_reason, case.scheme,
                              specs["quant_requires"], gpus)
        else:
            reason = why_skip(qs.device, qs.supported(qs.backend), qs.backend_reason, None, specs["quant_requires"])
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plan evaluations of the tests that will run (after -k/-m deselection), so they share model loads."""
    config = session.config
    if SESSION not in config.stash:
        return
    qs = _session(config)
    try:
        for item in session.items:
            if item.get_closest_marker("skip"):
                continue
            case, specs = _case(item), item.stash.get(SPECS, None)
            if hasattr(item, "plan"):
                item.plan(qs)
            if case is None or specs is None:
                continue
            qs.check_build(case)  # the model can be had and the recipe fits its layers: a usage error if not
            item.stash[PLANS] = _plans(qs, specs, case)
    except QuantError as e:
        _refuse(config, str(e))


def _plans(qs: QuantSession, specs: dict[str, list[Any]], case: Case) -> dict[str, list[gate_runs.GatePlan]]:
    """The gate plans of an item's markers (at collection finish; at its run for an item planned no earlier)."""
    return {"quant_accuracy": [gate_runs.plan_accuracy(qs, spec, case) for spec in specs["quant_accuracy"]],
            "quant_bos": [gate_runs.plan_bos(qs, spec, case) for spec in specs["quant_bos"]]}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    case = _case(item)
    specs = item.stash.get(SPECS, None)
    if case is None or not specs or not (specs["quant_accuracy"] or specs["quant_bos"]):
        return result
    qs = _session(item.config)
    try:
        plans = item.stash.get(PLANS, None) or _plans(qs, specs, case)
        ck = item.funcargs.get("quantized_checkpoint") or qs.checkpoint(case)
        rows = [gate_runs.run_accuracy(qs, s, p, case, ck, item.config.stash[BASELINE])
                for s, p in zip(specs["quant_accuracy"], plans["quant_accuracy"])]
        rows += [gate_runs.run_bos(qs, s, p, case, ck) for s, p in zip(specs["quant_bos"], plans["quant_bos"])]
    except QuantError as e:
        pytest.fail(f"pytest-quant: {e}", pytrace=False)
    conclude(item, rows, qs.settings.get("undecided"))
    return result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if COLLECTOR not in config.stash or not config.stash[COLLECTOR].rows:
        return
    rows, qs = config.stash[COLLECTOR].rows, _session(config)
    terminalreporter.section("pytest-quant gates")
    terminalreporter.write_line(table(rows))
    for r in rows:
        terminalreporter.write_line(f"- {r.model} {r.scheme} {r.task}: {r.message}")
        for line in flip_lines(r):
            terminalreporter.write_line(line)
    terminalreporter.write_line(f"backend: {qs.backend} ({qs.backend_reason}); device: {qs.device.describe()}; "
                                f"machine: {describe(signature(qs.device))}; "
                                f"alpha {qs.settings.get('alpha'):g}, UNDECIDED -> {qs.settings.get('undecided')}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or SESSION not in config.stash:
        return
    qs, collector = _session(config), config.stash[COLLECTOR]
    try:
        if qs.settings.get("report"):
            write_report(qs.settings.get("report"), collector.rows, collector.failed_tests, exitstatus,
                         {"device": qs.device.describe(), "machine": signature(qs.device), "profile": qs.settings.profile,
                          "alpha": qs.settings.get("alpha"), "undecided": qs.settings.get("undecided")})
        write_summary(qs.settings.get("summary"), collector.rows,
                      {"passed": passed(collector.rows, collector.failed_tests, exitstatus),
                       "machine_text": describe(signature(qs.device)), "profile": qs.settings.profile})
        target = qs.settings.get("save_baseline")
        if target and collector.rows:
            n = save_baseline(target, collector.rows, bool(qs.settings.get("overwrite_baseline")))
            print(f"\n[pytest-quant] wrote {n} metrics to baseline {target}")
    except QuantError as e:
        print(f"\n[pytest-quant] {e}")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION not in config.stash:
        return
    from pytest_quant.evaluate.gpu_memory import release_models

    release_models()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from pytest_quant.plugin.yaml_items import QuantYamlFile, is_config

    if is_config(file_path) and _started(parent.config) is not None:
        return QuantYamlFile.from_parent(parent, path=file_path)
    return None


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def quant_session(request: pytest.FixtureRequest) -> QuantSession:
    """The session's pytest-quant state (settings, store, device, backend), started here when nothing else asked
    for it yet (a test that uses only this fixture); a session that cannot start fails the test with why."""
    return _or_fail(lambda: _activate(request.config))


@pytest.fixture(scope="session")
def quant_case(request: pytest.FixtureRequest) -> Case:
    """The case under test: base model, scheme and (with --quant-checkpoint) the given checkpoint."""
    return request.param


@pytest.fixture(scope="session")
def quant_model_id(request: pytest.FixtureRequest) -> str:
    """The model under test, as given to --quant-model."""
    if hasattr(request, "param"):
        return request.param
    return request.getfixturevalue("quant_case").model


@pytest.fixture(scope="session")
def quant_scheme(quant_case: Case) -> str:
    return quant_case.scheme


@pytest.fixture(scope="session")
def quant_recipe(quant_session: QuantSession, quant_scheme: str) -> RecipeSpec:
    """The recipe for the scheme under test, with the session's knobs."""
    return quant_session.recipe(quant_scheme)


@pytest.fixture(scope="session")
def quant_base_model(quant_session: QuantSession, quant_model_id: str) -> Path:
    """A local transformers checkpoint of the unquantized model."""
    return _or_fail(lambda: quant_session.base(quant_model_id)[0])


@pytest.fixture(scope="session")
def calibration_dataset(quant_session: QuantSession, quant_base_model: Path) -> Any:
    """The tokenized calibration set, prepared as the guides do."""
    from pytest_quant.build.checkpoint import load_tokenizer
    from pytest_quant.build.calibration import prepare_calibration

    return _or_fail(lambda: prepare_calibration(quant_session.calibration(), load_tokenizer(quant_base_model)))


@pytest.fixture(scope="session")
def quantized_checkpoint(quant_session: QuantSession, quant_case: Case) -> Checkpoint:
    """The compressed-tensors checkpoint under test: built once (then cached), or the one given."""
    return _or_fail(lambda: quant_session.checkpoint(quant_case))


def _or_fail(fn: Any) -> Any:
    try:
        return fn()
    except QuantError as e:
        pytest.fail(f"pytest-quant: {e}", pytrace=False)
