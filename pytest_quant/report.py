"""The summary table and the JSON report of every gate that ran."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .store import atomic_write_text

COLUMNS = (("model", "model"), ("scheme", "scheme"), ("task", "task"), ("metric", "metric"), ("base", "base"),
           ("quantized", "quantized"), ("recovery", "recovery"), ("threshold", "threshold"),
           ("verdict", "verdict"), ("backend", "backend"), ("build_seconds", "build s"),
           ("eval_seconds", "eval s"))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "PASS" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table, one line per gate."""
    body = [[_cell(r.get("passed") if key == "verdict" else r.get(key)) for key, _ in COLUMNS] for r in rows]
    header = [title for _, title in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def write_report(path: Path | str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta, "gates": rows,
           "passed": all(r.get("passed") for r in rows)}
    atomic_write_text(Path(path), json.dumps(doc, indent=2, default=str))
