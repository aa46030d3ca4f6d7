"""The one result row every gate produces (markers, YAML items, the shipped suite) and what a verdict means for its
test."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict

from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED

ERROR = "ERROR"  # a quant test that failed or errored without a verdict


@dataclass(kw_only=True)
class GateRow:
    """One gate's result: a row of the terminal table and of the JSON report."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]  (the report's schema)

    model: str
    scheme: str
    task: str
    metric: str
    verdict: Literal["PASS", "FAIL", "UNDECIDED", "ERROR"]
    passed: bool  # what the test does with it (an UNDECIDED verdict follows --quant-undecided)
    message: str
    threshold: str = ""
    quantized: float | None = None
    base: float | None = None
    recovery: float | None = None
    n: int | None = None  # items (or tokens, prompts) the decision used
    looks: int | None = None  # how many times the gate looked (evaluated more items) before deciding
    backend: str | None = None
    key: str | None = None  # baseline key
    build_seconds: float | None = None
    eval_seconds: float | None = None
    nodeid: str | None = None
    outcome: str | None = None  # passed, failed, xfailed or error: the test's, once known
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict_outcome(verdict: str, undecided: str) -> bool:
    """Whether a gate passes its test: PASS does, FAIL does not, UNDECIDED as --quant-undecided says."""
    if verdict == PASS:
        return True
    if verdict == UNDECIDED:
        return undecided == "pass"
    assert verdict in (FAIL, ERROR)
    return False
