"""The one result row every gate produces (markers, YAML items, the shipped suite), typed end to end, and what a
verdict means for its test.

A row travels from a test (and from pytest-xdist workers) as the plain dict of :meth:`GateRow.as_dict` and is
read back with :meth:`GateRow.from_dict` (pydantic checks it); the reports read attributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter

from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, Decision

ERROR = "ERROR"  # a quant test that failed or errored without a verdict
FORBID = ConfigDict(extra="forbid")  # the report's schema: no field it does not name


@dataclass(kw_only=True)
class GateItems:
    """Per-item values the gate decided on, in the order of ``ids`` (paired: the same items for every model), and
    each model's answers where the evaluation kept them."""

    __pydantic_config__ = FORBID  # type: ignore[misc]

    ids: list[int]
    quantized: list[Any] | None = None
    base: list[Any] | None = None
    quantized_with_bos: list[Any] | None = None
    quantized_without_bos: list[Any] | None = None
    base_with_bos: list[Any] | None = None
    base_without_bos: list[Any] | None = None
    answers: dict[str, list[Any]] | None = None


@dataclass(kw_only=True)
class GateDetails:
    """What a row holds beyond its table columns; each gate fills the fields that concern it."""

    __pydantic_config__ = FORBID  # type: ignore[misc]

    bounds: dict[str, Decision] | None = None  # every bound's decision at the last look (the figure draws them)
    items: GateItems | None = None
    stderr: float | None = None
    items_to_decide: int | None = None  # UNDECIDED: the items that would decide it at the observed margin
    versions: dict[str, Any] | None = None
    numerics: dict[str, Any] | None = None  # the quantized model's evaluation numerics (dtype, kernels' switches)
    machine: dict[str, Any] | None = None  # the evaluating machine's signature
    engine: dict[str, Any] | None = None  # the quantized model's engine: start mode, GPU share, what vLLM reserved
    settings: dict[str, Any] | None = None  # what a baseline must match to be compared with
    task_digest: str | None = None
    baseline_comparison: Literal["paired", "unpaired"] | None = None
    quantized_without_bos: float | None = None  # BOS gates
    bos_loss: float | None = None
    bos_prefix_counts: dict[str, dict[str, int]] | None = None
    top1_agreement: float | None = None  # fidelity gates
    tokens: int | None = None


@dataclass(kw_only=True)
class GateRow:
    """One gate's result: a row of the terminal table and of the JSON report."""

    __pydantic_config__ = FORBID  # type: ignore[misc]

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
    extra: GateDetails = field(default_factory=GateDetails)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data (how it travels between processes and sits in the report)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GateRow":
        """A row back from :meth:`as_dict` (or a report's ``gates`` entry), checked against the schema."""
        return _ROW.validate_python(data)


_ROW = TypeAdapter(GateRow)


def verdict_outcome(verdict: str, undecided: str) -> bool:
    """Whether a gate passes its test: PASS does, FAIL does not, UNDECIDED as --quant-undecided says."""
    if verdict == PASS:
        return True
    if verdict == UNDECIDED:
        return undecided == "pass"
    assert verdict in (FAIL, ERROR)
    return False
