"""How gate rows (gate/verdict.py) travel from a test to the reports.

A row is attached to its test's report as a user property, so it reaches the xdist controller, the JUnit
XML, the terminal table and the JSON report. A quant test that fails or errors without a row gets an ERROR
row with the reason, so no report can look clean while a test broke.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_quant.gate.stats import UNDECIDED
from pytest_quant.gate.verdict import ERROR, GateRow

ROW_PROPERTY = "quant_gate"
ITEM_PROPERTY = "quant_item"  # marks a test as a quant test (with its model and scheme), for ERROR rows


def rerun_id(nodeid: str) -> str:
    """The id a user can rerun: without the ``@group`` that pytest-xdist's loadgroup appends."""
    return nodeid[:nodeid.rfind("@")] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid


def error_row(nodeid: str, info: dict[str, Any], reason: str) -> GateRow:
    return GateRow(model=info.get("model", "?"), scheme=info.get("scheme", "?"), task=info.get("task", "-"), metric="-",
                   verdict=ERROR, passed=False, message=reason, nodeid=nodeid, outcome="error")


def record(item: pytest.Item, rows: list[GateRow]) -> None:
    """Attach gate rows to the test report (so they travel from xdist workers and land in JUnit XML)."""
    for r in rows:
        r.nodeid = rerun_id(item.nodeid)
        item.user_properties.append((ROW_PROPERTY, r.as_dict()))
        item.user_properties.append((f"quant_{r.task}_{r.metric}", r.quantized))


def mark_quant_item(item: pytest.Item, info: dict[str, Any]) -> None:
    """Say that ``item`` is a quant test, so that a failure without a gate row becomes an ERROR row."""
    if not any(k == ITEM_PROPERTY for k, _ in item.user_properties):
        item.user_properties.append((ITEM_PROPERTY, info))


def _reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:500]


class RowCollector:
    """Gathers rows from test reports (on the xdist controller, from every worker), ERROR rows included."""

    def __init__(self) -> None:
        self.rows: list[GateRow] = []
        self.failed_tests: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        rows = [GateRow.from_dict(v) for k, v in report.user_properties if k == ROW_PROPERTY]
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        if report.when == "call":
            for r in rows:
                r.outcome = outcome
            self.rows.extend(rows)
        if report.failed:
            self.failed_tests.append(rerun_id(report.nodeid))
            if ITEM_PROPERTY in props and not rows:
                self.rows.append(error_row(rerun_id(report.nodeid), props[ITEM_PROPERTY],
                                           f"{report.when}: {_reason(report)}"))


def conclude(item: pytest.Item, rows: list[GateRow], undecided: str) -> None:
    """Record ``rows`` on the test and fail it (or xfail it, for UNDECIDED with ``undecided='xfail'``)."""
    record(item, rows)
    failed = [r for r in rows if not r.passed]
    if not failed:
        return
    text = "\n  ".join(f"{r.task} {r.metric}: {r.message}" for r in failed)
    if undecided == "xfail" and all(r.verdict == UNDECIDED for r in failed):
        pytest.xfail(f"quantization gate undecided:\n  {text}")
    pytest.fail(f"quantization gate failed:\n  {text}", pytrace=False)
