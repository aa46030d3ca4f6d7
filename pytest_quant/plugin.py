"""pytest wiring: options, fixtures, parametrization, markers, skips, reports. Logic lives elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from . import markers as mk
from .baseline import Baseline, save_baseline
from .build import Checkpoint
from .errors import QuantError, QuantUsageError
from .hardware import skip_reason
from .models import resolve_model
from .options import Settings, add_options
from .recipes import RecipeSpec
from .report import table, write_report
from .session import QuantSession

SESSION = pytest.StashKey[QuantSession]()
BASELINE = pytest.StashKey["Baseline | None"]()
ROWS = pytest.StashKey[list]()
SPECS = pytest.StashKey[dict]()  # an item's parsed markers, from collection to its run
CASE_FIXTURES = {"quant_case", "quantized_checkpoint", "quant_scheme", "quant_recipe"}
MODEL_FIXTURES = {"quant_model_id", "quant_base_model", "calibration_dataset"}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in mk.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    try:
        settings = Settings.from_pytest(config)
        for scheme in settings.get("scheme"):
            RecipeSpec(scheme)  # unknown scheme or model: fail before collecting anything
        for model in settings.get("model"):
            resolve_model(model)
        baseline = settings.get("baseline")
        config.stash[BASELINE] = Baseline.load(baseline) if baseline else None
        target = settings.get("save_baseline")
        if target and Path(target).exists() and not settings.get("overwrite_baseline") \
                and not hasattr(config, "workerinput"):
            raise QuantUsageError(f"baseline file {target} exists; pass --quant-overwrite-baseline to replace it")
        cache_dir = Path(str(config.cache.mkdir("quant"))) if config.cache else Path(".quant-cache")
        config.stash[SESSION] = QuantSession(settings, cache_dir)
    except QuantError as e:
        raise pytest.UsageError(f"pytest-quant: {e}") from None
    config.stash[ROWS] = []
    config.pluginmanager.register(_RowCollector(config.stash[ROWS]), "pytest-quant-rows")


def _session(config: pytest.Config) -> QuantSession:
    return config.stash[SESSION]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = set(metafunc.fixturenames)
    if not names & (CASE_FIXTURES | MODEL_FIXTURES):
        return
    session = _session(metafunc.config)
    models = session.settings.get("model")
    sources = [resolve_model(m) for m in models]
    if names & CASE_FIXTURES:
        cases = [(m, s) for m in models for s in session.settings.get("scheme")]
        ids = [f"{src.name}-{s}" for src in sources for s in session.settings.get("scheme")]
        metafunc.parametrize("quant_case", cases, ids=ids, indirect=True, scope="session")
    else:
        metafunc.parametrize("quant_model_id", models, ids=[s.name for s in sources], indirect=True,
                             scope="session")


def _case(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("quant_case") if callspec else None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    qs = _session(config)
    for item in items:
        case = _case(item)
        try:
            specs = item.stash[SPECS] = _marker_specs(item)
        except QuantUsageError as e:
            raise pytest.UsageError(f"pytest-quant: {item.nodeid}: {e}") from None
        if (specs["quant_accuracy"] or specs["quant_bos"]) and case is None:
            raise pytest.UsageError(f"pytest-quant: {item.nodeid}: quant_accuracy/quant_bos need the test to use "
                                    "the quantized_checkpoint fixture (it picks the model and scheme)")
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(f"{resolve_model(case[0]).name}-{case[1]}"))
            for spec in specs["quant_accuracy"]:
                mk.accuracy_plan(qs, spec, *case)
            for spec in specs["quant_bos"]:
                mk.bos_plan(qs, spec, *case)
        reason = _skip(qs, case, specs["quant_requires"])
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _marker_specs(item: pytest.Item) -> dict[str, list[Any]]:
    parse = {"quant_accuracy": mk.parse_accuracy, "quant_bos": mk.parse_bos, "quant_requires": mk.parse_requires}
    return {name: [fn(m.args, m.kwargs) for m in item.iter_markers(name)] for name, fn in parse.items()}


def _skip(qs: QuantSession, case: tuple[str, str] | None, requires: list[mk.RequiresSpec]) -> str | None:
    scheme = case[1] if case else None
    needs_backend = scheme is not None or any(r.backend for r in requires)
    backend = qs.backend if needs_backend else "hf"
    reason = skip_reason(scheme, qs.device, backend) if scheme else None
    gpus = max(qs.settings.get("build_gpus"), qs.settings.get("eval_gpus")) if scheme else 1
    if reason is None and gpus > 1:
        reason = skip_reason(None, qs.device, backend, gpus=gpus)
    for r in requires:
        reason = reason or skip_reason(r.scheme, qs.device, backend, r.min_capability, r.max_capability, r.gpus,
                                       r.gpu_memory_gib)
        if reason is None and r.backend and r.backend != backend:
            reason = f"needs the {r.backend} backend; this session uses {backend} ({qs.backend_reason})"
    return reason


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    case = _case(item)
    if case is None:
        return result
    qs = _session(item.config)
    specs = item.stash[SPECS]
    if not specs["quant_accuracy"] and not specs["quant_bos"]:
        return result
    rows = []
    try:
        ck = item.funcargs.get("quantized_checkpoint") or qs.checkpoint(*case)
        rows += [mk.run_accuracy(qs, s, ck, *case, item.config.stash[BASELINE]) for s in specs["quant_accuracy"]]
        rows += [mk.run_bos(qs, s, ck, *case) for s in specs["quant_bos"]]
    except QuantError as e:
        pytest.fail(f"pytest-quant: {e}", pytrace=False)
    record(item, rows)
    failed = [r["message"] for r in rows if not r["passed"]]
    if failed:
        pytest.fail("quantization gate failed:\n  " + "\n  ".join(failed), pytrace=False)
    return result


def record(item: pytest.Item, rows: list[dict[str, Any]]) -> None:
    """Attach gate rows to the test report (so they travel from xdist workers and land in JUnit XML)."""
    for r in rows:
        item.user_properties.append(("quant_gate", r))
        item.user_properties.append((f"quant_{r['task']}_{r['metric']}", r.get("quantized")))


class _RowCollector:
    """Gathers gate rows from test reports (on the xdist controller, from every worker)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.rows.extend(v for k, v in report.user_properties if k == "quant_gate")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    qs = _session(config)
    terminalreporter.section("pytest-quant gates")
    terminalreporter.write_line(table(rows))
    for r in rows:
        terminalreporter.write_line(f"- {r['model']} {r['scheme']} {r['task']}: {r['message']}")
    terminalreporter.write_line(f"backend: {qs.backend} ({qs.backend_reason}); device: {qs.device.describe()}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or SESSION not in config.stash:
        return
    qs, rows = _session(config), config.stash.get(ROWS, [])
    try:
        if qs.settings.get("report"):
            write_report(qs.settings.get("report"), rows, {"device": qs.device.describe(),
                                                           "profile": qs.settings.profile})
        target = qs.settings.get("save_baseline")
        if target and rows:
            n = save_baseline(target, rows, bool(qs.settings.get("overwrite_baseline")))
            print(f"\n[pytest-quant] wrote {n} metrics to baseline {target}")
    except QuantError as e:
        print(f"\n[pytest-quant] {e}")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from .yaml_items import QuantYamlFile, is_config

    if is_config(file_path):
        return QuantYamlFile.from_parent(parent, path=file_path)
    return None


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def quant_session(request: pytest.FixtureRequest) -> QuantSession:
    """The session's pytest-quant state (settings, store, device, backend)."""
    return _session(request.config)


@pytest.fixture(scope="session")
def quant_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(model, scheme) of the checkpoint under test; parametrized from --quant-model x --quant-scheme."""
    return request.param


@pytest.fixture(scope="session")
def quant_model_id(request: pytest.FixtureRequest) -> str:
    """The model under test, as given to --quant-model."""
    if hasattr(request, "param"):
        return request.param
    return request.getfixturevalue("quant_case")[0]


@pytest.fixture(scope="session")
def quant_scheme(quant_case: tuple[str, str]) -> str:
    return quant_case[1]


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
    from .build import load_tokenizer
    from .calibration import prepare_calibration

    return _or_fail(lambda: prepare_calibration(quant_session.calibration(), load_tokenizer(quant_base_model)))


@pytest.fixture(scope="session")
def quantized_checkpoint(quant_session: QuantSession, quant_case: tuple[str, str]) -> Checkpoint:
    """The compressed-tensors checkpoint for the model and scheme under test (built once, then cached)."""
    return _or_fail(lambda: quant_session.checkpoint(*quant_case))


def _or_fail(fn: Any) -> Any:
    try:
        return fn()
    except QuantError as e:
        pytest.fail(f"pytest-quant: {e}", pytrace=False)

