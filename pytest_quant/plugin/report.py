"""The summary table and the JSON report of every gate that ran (and every quant test that broke).

The report is :class:`Report`, versioned by ``format``; its JSON schema is docs/report.schema.json
(``python -m pytest_quant.plugin.report --schema`` prints it, ``--check REPORT`` validates a report against it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pytest_quant.gate.verdict import GateRow
from pytest_quant.infra.files import atomic_write_text

REPORT_FORMAT = "pytest-quant-report/1"


class Report(BaseModel):
    """The JSON report of one run (--quant-report)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[REPORT_FORMAT]  # type: ignore[valid-type]
    created: str
    exitstatus: int
    passed: bool  # true only when pytest exited 0, no test failed or errored, and every gate passed its test
    verdicts: dict[str, int]  # how many gates reached each verdict
    failed_tests: list[str]
    gates: list[GateRow]
    machine: dict[str, Any]  # the evaluating machine's signature (pytest_quant.infra.machine.signature)
    device: str | None = None  # absent when the run was refused before it found its device
    profile: str | None = None
    alpha: float | None = None
    undecided: Literal["fail", "pass", "xfail"] | None = None

    @classmethod
    def read(cls, path: Path | str) -> "Report":
        """A report from its file; a report of another format or shape is an error naming the first problem."""
        try:
            return cls.model_validate_json(Path(path).read_text())
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"{path}: not a {REPORT_FORMAT} report: {where}: {first['msg']}") from None

COLUMNS = (("model", "model"), ("scheme", "scheme"), ("task", "task"), ("metric", "metric"), ("base", "base"),
           ("quantized", "quantized"), ("recovery", "recovery"), ("n", "items"), ("looks", "looks"),
           ("threshold", "threshold"), ("verdict", "verdict"), ("backend", "backend"), ("build_seconds", "build s"),
           ("eval_seconds", "eval s"))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _verdict(r: GateRow) -> str:
    if r.verdict == "UNDECIDED":
        return f"UNDECIDED->{'pass' if r.passed else r.outcome or 'fail'}"
    return r.verdict


def table(rows: list[GateRow]) -> str:
    """A fixed-width text table, one line per gate."""
    body = [[_verdict(r) if key == "verdict" else _cell(getattr(r, key)) for key, _ in COLUMNS] for r in rows]
    header = [title for _, title in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def passed(rows: list[GateRow], failed_tests: list[str], exitstatus: int) -> bool:
    """True only when pytest exited 0, no test failed or errored, and every gate passed its test."""
    return exitstatus == 0 and not failed_tests and all(r.passed or r.outcome == "xfailed" for r in rows)


def write_summary(path: str | None, rows: list[GateRow], meta: dict[str, Any]) -> None:
    """The Markdown summary (--quant-summary PATH, with the gates' figure beside it as PATH.png when matplotlib is
    installed), appended to $GITHUB_STEP_SUMMARY when that is set (GitHub Actions renders it)."""
    import os

    from pytest_quant.plugin.summary import markdown, plot

    targets = [Path(p) for p in (path, os.environ.get("GITHUB_STEP_SUMMARY")) if p]
    if not targets or not rows:
        return
    figure = None
    if path:
        try:
            figure = plot(rows, Path(path).with_suffix(".png")).name
        except ImportError:
            figure = None  # matplotlib is optional: the table and items still say everything
    text = markdown(rows, meta, figure)
    if path:
        atomic_write_text(Path(path), text)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(text)


def write_report(path: Path | str, rows: list[GateRow], failed_tests: list[str], exitstatus: int,
                 meta: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    report = Report(format=REPORT_FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta,
                    exitstatus=int(exitstatus), passed=passed(rows, failed_tests, exitstatus), verdicts=counts,
                    failed_tests=failed_tests, gates=rows)
    atomic_write_text(Path(path), json.dumps(report.model_dump(), indent=2, default=str))


def main(argv: list[str]) -> int:
    """``--schema``: print the report's JSON schema; ``--check REPORT...``: validate reports (exit 1 on the first bad)."""
    if argv[:1] == ["--schema"]:
        print(json.dumps(Report.model_json_schema(), indent=2))
        return 0
    if argv[:1] == ["--check"] and argv[1:]:
        for path in argv[1:]:
            try:
                report = Report.read(path)
            except (OSError, ValueError) as e:
                print(e, file=sys.stderr)
                return 1
            print(f"{path}: {report.format}, {len(report.gates)} gates, passed {report.passed}")
        return 0
    print("usage: python -m pytest_quant.plugin.report --schema | --check REPORT...", file=sys.stderr)
    return 4


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
