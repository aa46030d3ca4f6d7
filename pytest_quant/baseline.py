"""Baseline files for release gating: measured metrics with their settings and library versions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import QuantUsageError
from .stats import judge
from .store import atomic_write_text
from .tasks import higher_is_better

FORMAT = "pytest-quant-baseline/1"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise QuantUsageError(f"baseline file {path} is not valid JSON ({e}); write it again with "
                              "--quant-save-baseline") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("metrics"), dict):
        raise QuantUsageError(f"baseline file {path} is not a pytest-quant baseline (expected "
                              f"format {FORMAT!r} and a 'metrics' object)")
    for key, entry in data["metrics"].items():
        if not isinstance(entry, dict) or isinstance(entry.get("value"), bool) \
                or not isinstance(entry.get("value"), (int, float)):
            raise QuantUsageError(f"baseline file {path}: metrics[{key!r}].value must be a number")
    return data["metrics"]


class Baseline:
    """A loaded baseline: key -> {value, stderr, n, settings, versions}."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: Path | str) -> "Baseline":
        path = Path(path)
        if not path.is_file():
            raise QuantUsageError(f"baseline file {path} does not exist; write one with --quant-save-baseline {path}")
        return cls(path, _read(path))

    def compare(self, key: str, metric: str, value: float, stderr: float, settings: dict[str, Any],
                versions: dict[str, str], rtol: float, alpha: float) -> tuple[str | None, str]:
        """(verdict, message) against the stored value; verdict None when the baseline lacks the key.

        The bound is ``value >= stored * (1 - rtol)`` (``<=`` ``* (1 + rtol)`` when lower is better), decided
        with both measurements' standard errors (the stored run's items need not be this run's).
        """
        entry = self.entries.get(key)
        name = self.path.name
        if entry is None:
            return None, (f"baseline {name} has no entry {key!r}: nothing to compare with (add it with "
                          "--quant-save-baseline FILE --quant-overwrite-baseline)")
        stored, stored_se = float(entry["value"]), float(entry.get("stderr") or 0.0)
        higher = higher_is_better(metric)
        limit = stored * (1 - rtol) if higher else stored * (1 + rtol)
        margin = (value - limit) if higher else (limit - value)
        se = math.sqrt(stderr ** 2 + (stored_se * (1 - rtol if higher else 1 + rtol)) ** 2)
        d = judge(margin, se, int(entry.get("n") or 0), alpha)
        message = (f"baseline {name}: {metric} {value:.4f} vs stored {stored:.4f} (rtol {rtol:g}): {d.verdict} "
                   f"(margin {margin:+.4f} ± {se:.4f})")
        stored_settings = entry.get("settings", {})
        differ = sorted(k for k in set(stored_settings) | set(settings) if stored_settings.get(k) != settings.get(k))
        if differ:
            message += "; settings differ from the baseline's: " + ", ".join(
                f"{k} {stored_settings.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        stored_versions = entry.get("versions", {})
        changed = sorted(k for k in set(stored_versions) | set(versions) if stored_versions.get(k) != versions.get(k))
        if changed:
            message += "; library versions differ from the baseline's: " + ", ".join(
                f"{k} {stored_versions.get(k)} -> {versions.get(k)}" for k in changed)
        return d.verdict, message


def save_baseline(path: Path | str, rows: list[dict[str, Any]], overwrite: bool) -> int:
    """Write the accuracy rows into a baseline file, keeping its entries that this run did not measure.

    An existing file is only updated with ``overwrite`` (--quant-overwrite-baseline).
    """
    path = Path(path)
    metrics = {r["key"]: {"value": r["quantized"], "stderr": r["extra"].get("stderr"), "n": r.get("n"),
                          "settings": r["extra"].get("settings", {}), "versions": r["extra"].get("versions", {})}
               for r in rows if r.get("key") and "settings" in r.get("extra", {}) and r.get("quantized") is not None}
    if path.exists() and not overwrite:
        raise QuantUsageError(f"baseline file {path} exists; pass --quant-overwrite-baseline to update it")
    merged = {**(_read(path) if path.exists() else {}), **metrics}
    atomic_write_text(path, json.dumps({"format": FORMAT, "metrics": merged}, indent=2, sort_keys=True))
    return len(metrics)
