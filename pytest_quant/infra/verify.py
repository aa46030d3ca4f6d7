"""Check every entry of a store: ``python -m pytest_quant.infra.verify DIR`` prints each corrupt entry (a file that
does not match its manifest's SHA-256, a missing or unreadable manifest) and each half-written one (a ``.tmp-*``
directory a killed process left), then one summary line; exit 0 when the store is whole, 1 otherwise, 4 for a
path that is no store. Reads only; the next run that needs an entry rebuilds it."""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_quant.infra.store import MANIFEST, Store


def problems(root: Path) -> tuple[int, list[str]]:
    """(whole entries, one line per corrupt or half-written entry) of the store at ``root``."""
    store, whole, found = Store(root, log=lambda _: None), 0, []
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "digests"):
        for path in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
            if path.name.startswith(".tmp-"):
                found.append(f"half-written: {path} (a process died while creating it; removed by the next run "
                             "that takes its key's lock)")
            elif (path / MANIFEST).exists() or any(path.iterdir()):
                problem = store.verify(path)
                if problem is None:
                    whole += 1
                else:
                    found.append(f"corrupt: {path}: {problem}")
    return whole, found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m pytest_quant.infra.verify STORE_DIR", file=sys.stderr)
        return 4
    root = Path(argv[0])
    if not root.is_dir():
        print(f"{root} is not a directory: pass a pytest-quant store (--quant-cache-dir)", file=sys.stderr)
        return 4
    whole, found = problems(root)
    for line in found:
        print(line)
    print(f"{root}: {whole} whole entries, {len(found)} corrupt or half-written")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
