"""Check every entry of a store: ``python -m pytest_quant.infra.verify DIR|URL`` prints each corrupt entry (a file that
does not match its manifest's SHA-256, a missing or unreadable manifest) and each half-written one (a ``.tmp-*``
directory a killed process left; in a shared store, an uploaded folder no manifest names), then one summary line;
exit 0 when the store is whole, 1 otherwise, 4 for a path that is no store or a shared store that cannot be read.
Reads only (a shared store's files are downloaded to a temporary directory to be hashed); the next run that needs an
entry rebuilds it."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.infra.shared import SharedCorrupt, SharedTier
from pytest_quant.infra.files import MANIFEST
from pytest_quant.infra.store import Store

HEX = re.compile(r"[0-9a-f]{32}")


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


def shared_problems(tier: SharedTier) -> tuple[int, list[str]]:
    """(whole entries, one line per corrupt or half-written entry) of a shared store."""
    files = [p[len(tier.root) + 1:] for p in tier.fs.find(tier.root)]
    entries = sorted(p[: -len(MANIFEST) - 1] for p in files if p.endswith("/" + MANIFEST))
    named = {f"{e}/{(tier.manifest(*e.rsplit('/', 1)) or {}).get('shared')}" for e in entries}
    orphans = set()
    for p in files:
        parts = p.split("/")
        folder = "/".join(parts[:max(i for i, x in enumerate(parts[:-1]) if HEX.fullmatch(x)) + 1]) \
            if any(HEX.fullmatch(x) for x in parts[:-1]) else None
        if folder and not p.endswith("/" + MANIFEST) and folder not in named:
            orphans.add(folder)
    found = [f"half-written: {tier.url}/{o} (uploaded files no manifest names: a runner died while publishing, "
             "or lost a race; never fetched)" for o in sorted(orphans)]
    whole = 0
    for e in entries:
        kind, key = e.rsplit("/", 1)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                whole += tier.fetch(kind, key, Path(tmp), e) is not None
            except SharedCorrupt as err:
                found.append(f"corrupt: {err}")
            except OSError as err:
                found.append(f"corrupt: {tier.url}/{e}: {err}")
    return whole, found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m pytest_quant.infra.verify STORE_DIR|SHARED_STORE_URL", file=sys.stderr)
        return 4
    if "://" in argv[0]:
        try:
            tier = SharedTier(argv[0], lambda _: None)
        except QuantUsageError as e:
            print(str(e).replace("--quant-shared-store ", ""), file=sys.stderr)
            return 4
        name, (whole, found) = tier.url, shared_problems(tier)
    else:
        root = Path(argv[0])
        if not root.is_dir():
            print(f"{root} is not a directory: pass a pytest-quant store (--quant-cache-dir)", file=sys.stderr)
            return 4
        name, (whole, found) = str(root), problems(root)
    for line in found:
        print(line)
    print(f"{name}: {whole} whole entries, {len(found)} corrupt or half-written")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
