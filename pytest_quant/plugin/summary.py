"""What regressed: the items that flipped, a Markdown summary CI renders, and a picture of every gate.

Plain functions on report rows (:class:`GateRow`, as the JSON report holds them), so they run on a stored report as
well as at the end of a session. The paired test decides on discordant items; these are the ones shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_quant.evaluate.tasks import BUNDLED_TASKS
from pytest_quant.gate.verdict import GateRow

SYMBOLS = {"PASS": "✅", "FAIL": "❌", "UNDECIDED": "❔", "ERROR": "💥"}
SHOWN = 3  # flipped items shown in the terminal per gate


def _right(v: Any) -> bool | None:
    """An item's value as right (True) or wrong (False); None for values that are not 0/1 (perplexity)."""
    return bool(v) if isinstance(v, (int, float)) and v in (0, 1) else None


def flips(row: GateRow) -> dict[str, Any] | None:
    """Discordant items of a paired accuracy or BOS gate: ids the reference gets right and the compared model
    wrong ('lost'), and the reverse ('gained'). Accuracy: quantized vs base; BOS: without BOS vs with (quantized).
    None for gates without 0/1 per-item values."""
    items = row.extra.items
    if items is None:
        return None
    if items.base is not None and items.quantized is not None:
        names, what = ("base", "quantized"), "base right, quantized wrong"
    elif items.quantized_with_bos is not None and items.quantized_without_bos is not None:
        names, what = ("quantized_with_bos", "quantized_without_bos"), "right with BOS, wrong without"
    else:
        return None
    ids = items.ids
    pairs = zip(getattr(items, names[0]), getattr(items, names[1]))
    lost, gained = [], []
    for i, (ref, other) in zip(ids, pairs):
        r, o = _right(ref), _right(other)
        if r is None or o is None:
            return None
        if r and not o:
            lost.append(i)
        elif o and not r:
            gained.append(i)
    kept = items.answers or {}
    answers = {i: {name.replace("quantized_", ""): kept[name][n] for name in names if name in kept}
               for n, i in enumerate(ids) if i in lost}
    return {"lost": lost, "gained": gained, "lost_means": what, "items": len(ids), "answers": answers}


def _doc(task: str, item: int) -> dict[str, Any] | None:
    """The test document ``item`` of a bundled task (None for other tasks)."""
    cfg = BUNDLED_TASKS.get(task)
    if cfg is None:
        return None
    path = Path(cfg["dataset_kwargs"]["data_files"][cfg["test_split"]])
    for n, line in enumerate(path.read_text().splitlines()):
        if n == item:
            return json.loads(line)
    return None


def describe_item(task: str, item: int, answers: dict[str, Any] | None = None, width: int = 70) -> str:
    """One line: the item's prompt (shortened) and its target, where the task is bundled, and what each model
    answered (``answers``: model -> choice index or generated text)."""
    doc = _doc(task, item)
    choices = doc.get("choices") if doc else None
    said = lambda a: choices[a] if isinstance(a, int) and isinstance(choices, list) and a < len(choices) else a  # noqa: E731
    answered = "".join(f", {name} {str(said(a))[:width]!r}" for name, a in (answers or {}).items() if a is not None)
    if doc is None:
        return f"item {item}{answered}"
    question = " ".join(str(doc.get("question", doc.get("text", ""))).split())
    question = question if len(question) <= width else question[:width - 1] + "…"
    return f"item {item}: {question!r} (target {said(doc.get('answer'))!r}{answered})"


def flip_lines(row: GateRow, limit: int = SHOWN) -> list[str]:
    """The terminal's lines for a FAIL or UNDECIDED gate: discordant counts, then the first flipped items."""
    f = flips(row)
    if f is None or row.verdict not in ("FAIL", "UNDECIDED"):
        return []
    head = (f"  {len(f['lost'])} of {f['items']} items {f['lost_means']}, {len(f['gained'])} the reverse "
            "(the discordant pairs the paired test decided on)")
    return [head, *(f"    {describe_item(row.task, i, f['answers'].get(i))}" for i in f["lost"][:limit])]


def markdown(rows: list[GateRow], meta: dict[str, Any], figure: str | None = None) -> str:
    """A summary GitHub renders: the gate table with symbols, each gate's flipped items in a collapsed section."""
    lines = ["## pytest-quant gates", "",
             f"{'passed' if meta.get('passed') else 'failed'} · machine: {meta.get('machine_text', '-')} · "
             f"profile {meta.get('profile', '-')}", "",
             "| | model | scheme | task | metric | base | quantized | items | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(f"| {SYMBOLS.get(r.verdict, '')} | {r.model} | {r.scheme} | {r.task} | {r.metric} | "
                     f"{cell(r.base)} | {cell(r.quantized)} | {cell(r.n)} | {r.verdict} |")
    if figure:
        lines += ["", f"![every gate's margin and bounds]({figure})"]
    for r in rows:
        f = flips(r)
        lines += ["", f"<details><summary>{SYMBOLS.get(r.verdict, '')} {r.scheme} {r.task} {r.metric}: "
                      f"{r.verdict}</summary>", "", r.message]
        if f:
            lines += ["", f"{len(f['lost'])} items {f['lost_means']}, {len(f['gained'])} the reverse:", ""]
            lines += [f"- {describe_item(r.task, i, f['answers'].get(i))}" for i in f["lost"]]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def plot(rows: list[GateRow], path: Path) -> Path:
    """One PNG: per gate bound, the observed margin with its bounds at the gate's confidence and the threshold
    (margin 0), colored by verdict. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"PASS": "#2a9d3f", "FAIL": "#c62828", "UNDECIDED": "#e0a100"}
    entries = []
    for r in rows:
        for name, d in (r.extra.bounds or {}).items():
            entries.append((f"{r.scheme} {r.task} {name}", d))
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(entries), 1) + 1.2))
    for y, (label, d) in enumerate(entries):
        ax.plot([d.lower, d.upper], [y, y], color=colors.get(d.verdict, "grey"), linewidth=3)
        ax.plot([d.mean], [y], "o", color=colors.get(d.verdict, "grey"))
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(entries)), [e[0] for e in entries], fontsize=8)
    ax.invert_yaxis()  # the first gate on top, as in the table
    ax.set_xlabel("margin over the threshold (0: the threshold), with its bounds")
    ax.set_title("pytest-quant gates: PASS green, FAIL red, UNDECIDED amber")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
