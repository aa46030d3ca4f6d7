"""Baseline files for release gating: measured metrics with their settings and library versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import QuantUsageError
from .gates import Threshold, Verdict, check
from .store import atomic_write_text

FORMAT = "pytest-quant-baseline/1"


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
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise QuantUsageError(f"baseline file {path} is not valid JSON ({e}); write it again with "
                                  "--quant-save-baseline") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("metrics"), dict):
            raise QuantUsageError(f"baseline file {path} is not a pytest-quant baseline (expected "
                                  f"format {FORMAT!r} and a 'metrics' object)")
        for key, entry in data["metrics"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)):
                raise QuantUsageError(f"baseline file {path}: metrics[{key!r}].value must be a number")
        return cls(path, data["metrics"])

    def compare(self, key: str, metric: str, value: float, settings: dict[str, Any], rtol: float) -> Verdict | None:
        """A regression check against the stored value, or None when the baseline lacks the key."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        v = check(metric, value, Threshold(expected=float(entry["value"]), rtol=rtol))
        stored = entry.get("settings", {})
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        message = f"baseline {self.path.name}: " + v.message
        if differ:
            message += "; settings differ from the baseline's: " + ", ".join(
                f"{k} {stored.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        return Verdict(v.passed, message, value, float(entry["value"]), failures=v.failures)


def save_baseline(path: Path | str, rows: list[dict[str, Any]], overwrite: bool) -> int:
    """Write the accuracy rows as a baseline; refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    metrics = {r["key"]: {"value": r["quantized"], "stderr": r.get("stderr"), "n": r.get("n"),
                          "settings": r.get("settings", {}), "versions": r.get("versions", {})}
               for r in rows if r.get("key") and "settings" in r and r.get("quantized") is not None}
    try:
        atomic_write_text(path, json.dumps({"format": FORMAT, "metrics": metrics}, indent=2, sort_keys=True),
                          overwrite=overwrite)
    except FileExistsError:
        raise QuantUsageError(f"baseline file {path} exists; pass --quant-overwrite-baseline to replace it") from None
    return len(metrics)
