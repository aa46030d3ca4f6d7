"""pytest wiring: hooks only. The fixtures are :mod:`.fixtures`' (a plugin this one requires), starting a session
:mod:`.activation`'s, pytest-xdist's quirks :mod:`.xdist_compat`'s, YAML configs :mod:`.yaml_items`', rows and reports
:mod:`.rows`, :mod:`.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_quant.build.models import resolve_model
from pytest_quant.gate.baseline import save_baseline
from pytest_quant.infra.errors import QuantError
from pytest_quant.infra.machine import describe, signature
from pytest_quant.plugin import activation, xdist_compat
from pytest_quant.plugin.report import passed, table, write_report, write_summary
from pytest_quant.plugin.rows import conclude, mark_quant_item
from pytest_quant.plugin.stash import BASELINE, COLLECTOR, MARKED_REFUSALS, PLANS, REFUSED, SESSION, SPECS
from pytest_quant.plugin.summary import flip_lines
from pytest_quant.session import ahead, gate_runs
from pytest_quant.session.markers import MARKERS, parse_markers
from pytest_quant.session.markers import RecipeSpec as RecipeMarker
from pytest_quant.session.session import Case, QuantSession
from pytest_quant.session.settings import add_options, asked

pytest_plugins = ["pytest_quant.plugin.fixtures"]
CASE_FIXTURES = {"quant_case", "quantized_checkpoint", "quant_scheme", "quant_recipe"}
MODEL_FIXTURES = {"quant_model_id", "quant_base_model", "calibration_dataset"}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_quant.plugin import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; start the session only when the command line or ini names a quant option. Otherwise
    pytest-quant stays inert until a test uses its fixtures or markers or a quant_*.yaml is collected (activation.activate):
    a project that merely has it installed gets no probe and no QUANT_* validation."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("help", False) or config.getoption("version", False):
        return
    if asked(config):
        try:
            activation.activate(config)
        except QuantError as e:
            raise pytest.UsageError(f"pytest-quant: {e}") from None


def _session(config: pytest.Config) -> QuantSession:
    return config.stash[SESSION]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = set(metafunc.fixturenames)
    if not names & (CASE_FIXTURES | MODEL_FIXTURES) or (session := activation.started(metafunc.config)) is None:
        return
    if names & CASE_FIXTURES:
        try:
            marked = [RecipeMarker.parse("quant_recipe", m.args, m.kwargs).path
                      for m in metafunc.definition.iter_markers("quant_recipe")]
            cases = [c for path in marked for c in session.recipe_cases(metafunc.definition.path.parent / path)] \
                if marked else session.cases()
        except QuantError as e:  # refused when the items are collected (exit 4), with the test's name
            metafunc.definition.config.stash.setdefault(MARKED_REFUSALS, {})[metafunc.definition.nodeid] = str(e)
            cases = []
        metafunc.parametrize("quant_case", cases, ids=[c.id for c in cases], indirect=True, scope="session")
    else:
        models = session.settings.get("model")
        metafunc.parametrize("quant_model_id", models, ids=[resolve_model(m).name for m in models], indirect=True,
                             scope="session")


def _case(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("quant_case") if callspec else None
    return case if isinstance(case, Case) else None  # an empty parameter set (a refused quant_recipe) gives NOTSET


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist, one group per checkpoint (--dist loadgroup: built once, one engine per checkpoint).
    Marked as items are collected: xdist reads the groups in its own collection_modifyitems, before ours."""
    case = _case(item)
    if case is not None and item.config.pluginmanager.hasplugin("xdist"):
        item.add_marker(pytest.mark.xdist_group(case.id))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION not in config.stash and REFUSED not in config.stash and \
            not any(item.get_closest_marker(name) for item in items for name in MARKERS):
        return  # not asked: inert
    try:
        qs = activation.activate(config)  # a refusal remembered from collection is raised again here
    except QuantError as e:
        activation.refuse(config, str(e), row=False)  # the report already holds the refusal
    try:
        qs.start()
    except QuantError:
        pass  # no store or backend: collection below stops with that error, reported where it always is
    for nodeid, reason in config.stash.get(MARKED_REFUSALS, {}).items():
        activation.refuse(config, f"{nodeid}: {reason}")
    for item in items:
        case = _case(item)
        try:
            specs = item.stash[SPECS] = parse_markers(item)
        except QuantError as e:
            activation.refuse(config, f"{item.nodeid}: {e}")
        if (specs["quant_accuracy"] or specs["quant_bos"]) and case is None:
            activation.refuse(config, f"{item.nodeid}: quant_accuracy/quant_bos need the test to use the quantized_checkpoint "
                            "fixture (it picks the model and scheme)")
        quant = case is not None or hasattr(item, "quant_check") or any(specs.values())
        if not quant:
            continue
        if case is not None or hasattr(item, "quant_check"):
            try:
                qs.store  # noqa: B018  (fail collection, not every test, when there is nowhere to keep builds)
            except QuantError as e:
                activation.refuse(config, str(e))
        info = {"model": case.model if case else getattr(item, "quant_model", "-"),
                "scheme": case.scheme if case else getattr(item, "quant_scheme", "-")}
        mark_quant_item(item, info)
        if case is not None:
            xdist_compat.group_in_node_id(item, case.id)
            gpus = max(qs.settings.get("build_gpus"), qs.settings.get("eval_gpus"))
            reason = qs.why_not_build(case) or qs.why_skip(case.scheme, specs["quant_requires"], gpus)
        else:
            reason = qs.why_skip(None, specs["quant_requires"])
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
        activation.refuse(config, str(e))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """The tests begin: on a GPU, evaluations start ahead of the tests that need them (session/ahead.py)."""
    if SESSION in session.config.stash and not session.config.option.collectonly:
        try:
            ahead.start(_session(session.config))
        except QuantError:
            pass  # the tests that need what failed raise it themselves


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
    from pytest_quant.plugin.yaml_configs import is_config

    if is_config(file_path) and activation.started(parent.config) is not None:
        from pytest_quant.plugin.yaml_items import QuantYamlFile

        return QuantYamlFile.from_parent(parent, path=file_path)
    return None
