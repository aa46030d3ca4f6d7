"""Baseline files for release gating: per-item results of a release, so the next one is compared item by item.

Format ``pytest-quant-baseline/2`` (docs/REFERENCE.md, "Baseline files"): ``metrics`` maps a gate's key to its
value, standard error, item count, settings, library versions, the task's content digest, the evaluating
machine's signature and ``items`` (item ids and per-item values). Comparing with an entry that has items of the
same task content is **paired**: a recovery gate of ``1 - rtol`` against the stored values on the items both runs
evaluated, so a model compared with its own baseline passes and a real drop fails with far fewer items than an
unpaired comparison needs. Entries without items (format 1 files) or of another task version are compared
unpaired (both standard errors combined), and the message says which comparison ran and why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.gate.scores import Threshold, aggregate, bound_scores
from pytest_quant.infra.machine import describe, same
from pytest_quant.gate.stats import judge
from pytest_quant.gate.verdict import GateRow
from pytest_quant.infra.files import atomic_write_text
from pytest_quant.evaluate.tasks import higher_is_better

FORMAT = "pytest-quant-baseline/2"
READABLE = ("pytest-quant-baseline/1", FORMAT)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise QuantUsageError(f"baseline file {path} is not valid JSON ({e}); write it again with "
                              "--quant-save-baseline") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE or not isinstance(data.get("metrics"), dict):
        raise QuantUsageError(f"baseline file {path} is not a pytest-quant baseline (expected format "
                              f"{' or '.join(map(repr, READABLE))} and a 'metrics' object)")
    for key, entry in data["metrics"].items():
        if not isinstance(entry, dict) or isinstance(entry.get("value"), bool) \
                or not isinstance(entry.get("value"), (int, float)):
            raise QuantUsageError(f"baseline file {path}: metrics[{key!r}].value must be a number")
        items = entry.get("items")
        if items is not None and (not isinstance(items, dict) or not isinstance(items.get("ids"), list)
                                  or not isinstance(items.get("values"), list)
                                  or len(items["ids"]) != len(items["values"])):
            raise QuantUsageError(f"baseline file {path}: metrics[{key!r}].items must hold 'ids' and 'values' "
                                  "lists of the same length")
        _agrees(path, key, entry)
    return data


def _agrees(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Refuse an entry whose ``value`` is not what its own per-item values give (a hand-edited bar): a paired
    comparison decides on the items and would silently ignore the edit."""
    items, parts = entry.get("items"), key.split("|")
    if not items or not items.get("values") or len(parts) < 4:
        return
    try:
        recomputed = aggregate(parts[3], items["values"])[0]
    except (TypeError, ValueError, IndexError):
        return  # values of a shape this metric does not aggregate: checked where they are compared
    if not math.isclose(recomputed, float(entry["value"]), rel_tol=1e-6, abs_tol=1e-9):
        raise QuantUsageError(
            f"baseline file {path}: metrics[{key!r}].value is {entry['value']:g} but its own {len(items['values'])} "
            f"per-item values give {recomputed:.4g}: the value was edited by hand, and a paired comparison decides on "
            "the items; save a new baseline with --quant-save-baseline, or delete the entry's 'items' to compare "
            "against the edited value (unpaired)")


class Baseline:
    """A loaded baseline: key -> {value, stderr, n, settings, versions, task_digest, machine, items}."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: Path | str) -> "Baseline":
        path = Path(path)
        if path.is_dir():
            raise QuantUsageError(f"baseline {path} is a directory; pass the baseline file (a .json written by "
                                  "--quant-save-baseline)")
        if not path.is_file():
            raise QuantUsageError(f"baseline file {path} does not exist; write one with --quant-save-baseline {path}")
        return cls(path, _read(path)["metrics"])

    def paired(self, key: str, metric: str, rtol: float, task_digest: str | None
               ) -> tuple[Callable[[list[int], list[Any]], dict[str, list[float]]] | None, str]:
        """A per-item scorer for 'this run recovers ``1 - rtol`` of the stored values on the same items' (a bound
        the gate decides with its own looks), or None and why the comparison cannot be paired."""
        entry = self.entries.get(key)
        if entry is None:
            return None, "no entry"
        stored_items = entry.get("items")
        if not stored_items or not stored_items.get("ids"):
            return None, "the baseline holds no item results (a format 1 file)"
        if entry.get("task_digest") != task_digest:
            return None, "the task's items changed since the baseline was saved"
        kept = dict(zip((int(i) for i in stored_items["ids"]), stored_items["values"]))
        name = f"baseline {self.path.name} recovery {1 - rtol:g}"

        def scores(ids: list[int], values: list[Any]) -> dict[str, list[float]]:
            common = [(v, kept[i]) for i, v in zip(ids, values) if i in kept]
            if not common:
                return {}
            return {f"{name} on {len(common)} items": bound_scores(metric, Threshold(recovery=1 - rtol),
                                                                   [q for q, _ in common], [b for _, b in common])
                    [f"recovery {1 - rtol:g}"]}
        return scores, ""

    def compare(self, key: str, metric: str, value: float, stderr: float, settings: dict[str, Any],
                versions: dict[str, str], rtol: float, alpha: float, machine: dict[str, Any] | None = None,
                paired: bool = False, why: str = "") -> tuple[str | None, str]:
        """(verdict, message) against the stored entry; verdict None when the baseline lacks the key, or when the
        comparison was ``paired`` (the gate's own bound decided it; the message names the differences).

        Unpaired: ``value >= stored * (1 - rtol)`` (``<= stored * (1 + rtol)`` when lower is better), decided with
        both measurements' standard errors.
        """
        entry = self.entries.get(key)
        name = self.path.name
        if entry is None:
            return None, (f"baseline {name} has no entry {key!r}: nothing to compare with (add it with "
                          "--quant-save-baseline FILE --quant-overwrite-baseline)")
        stored = float(entry["value"])
        if paired:
            return None, (f"baseline {name} (paired on the same items): {metric} {value:.4f} vs stored {stored:.4f} "
                          f"(rtol {rtol:g}), decided by the bound above"
                          + _differences(entry, settings, versions, machine))
        stored_se = float(entry.get("stderr") or 0.0)
        higher = higher_is_better(metric)
        limit = stored * (1 - rtol) if higher else stored * (1 + rtol)
        margin = (value - limit) if higher else (limit - value)
        se = math.sqrt(stderr ** 2 + (stored_se * (1 - rtol if higher else 1 + rtol)) ** 2)
        d = judge(margin, se, int(entry.get("n") or 0), alpha)
        return d.verdict, (f"baseline {name} (unpaired: {why}): {metric} {value:.4f} vs stored {stored:.4f} "
                           f"(rtol {rtol:g}): {d.verdict} (margin {margin:+.4f} ± {se:.4f})"
                           + _differences(entry, settings, versions, machine))


def _differences(entry: dict[str, Any], settings: dict[str, Any], versions: dict[str, str],
                 machine: dict[str, Any] | None) -> str:
    out = ""
    stored_settings = entry.get("settings", {})
    differ = sorted(k for k in set(stored_settings) | set(settings) if stored_settings.get(k) != settings.get(k))
    if differ:
        out += "; settings differ from the baseline's: " + ", ".join(
            f"{k} {stored_settings.get(k)!r} -> {settings.get(k)!r}" for k in differ)
    stored_versions = entry.get("versions", {})
    changed = sorted(k for k in set(stored_versions) | set(versions) if stored_versions.get(k) != versions.get(k))
    if changed:
        out += "; library versions differ from the baseline's: " + ", ".join(
            f"{k} {stored_versions.get(k)} -> {versions.get(k)}" for k in changed)
    if entry.get("machine") and machine and not same(entry["machine"], machine):
        out += f"; the baseline was measured on another machine ({describe(entry['machine'])})"
    return out


def save_baseline(path: Path | str, rows: list[GateRow], overwrite: bool) -> int:
    """Write the accuracy rows into a baseline file, keeping its entries that this run did not measure.

    An existing file is only updated with ``overwrite`` (--quant-overwrite-baseline).
    """
    path = Path(path)
    metrics = {}
    for r in rows:
        d = r.extra
        if not (r.key and d.settings is not None and r.quantized is not None):
            continue
        metrics[r.key] = {"value": r.quantized, "stderr": d.stderr, "n": r.n, "settings": d.settings,
                          "versions": d.versions or {}, "task_digest": d.task_digest, "machine": d.machine,
                          "items": {"ids": d.items.ids if d.items else [],
                                    "values": (d.items.quantized if d.items else None) or []}}
    if path.exists() and not overwrite:
        raise QuantUsageError(f"baseline file {path} exists; pass --quant-overwrite-baseline to update it")
    merged = {**(_read(path)["metrics"] if path.exists() else {}), **metrics}
    atomic_write_text(path, json.dumps({"format": FORMAT, "metrics": merged}, indent=2, sort_keys=True))
    return len(metrics)
