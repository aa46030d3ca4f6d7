"""Installed versions of the libraries a result depends on (part of store keys, results and reports).

Standard library only: the vLLM environment's runner (evaluate/lm_runner.py, run as a script) loads it too.
"""

from __future__ import annotations

import importlib.metadata


def versions(names: tuple[str, ...], missing: str | None = "absent") -> dict[str, str]:
    """``{distribution: version}``; one not installed maps to ``missing``, or is left out when that is None."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out
