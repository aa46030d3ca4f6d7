"""A content-addressed store for checkpoints and evaluation results.

Each entry lives at ``<root>/<kind>/<key>/`` where ``key`` is a hash of everything that determines its
content. Entries are created in a temporary directory, given a ``manifest.json`` with the hash of every
file, and renamed into place, so a reader sees a whole entry or none. A file lock per key makes
concurrent processes (pytest-xdist workers, separate pytest runs) create each entry once; the lock is
an ``fcntl`` lock, released by the kernel when its holder dies, so a crashed builder never blocks.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from pytest_quant.infra.errors import QuantEnvironmentError
from pytest_quant.infra.files import MANIFEST, REMEMBERED, atomic_write_text, digest, file_digest, tree_files
from pytest_quant.infra.shared import SharedCorrupt, SharedTier, client_error

log = logging.getLogger("pytest_quant")

def log_info(message: str) -> None:
    log.info(message, stacklevel=2)


def _install(tmp: Path, final: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` last into the finished folder ``tmp`` and rename it to ``final`` (an old one moved aside)."""
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
    if final.exists():
        trash = final.with_name(f".tmp-{final.name}-old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
    return final


@dataclass
class Entry:
    path: Path
    manifest: dict[str, Any]
    cached: bool  # True when served from the store, False when created by this call


class Store:
    """Entries keyed by content; ``get_or_create`` computes each one at most once."""

    def __init__(self, root: Path | str, log: Callable[[str], None] | None = None,
                 shared: SharedTier | None = None) -> None:
        self.root = Path(root)
        self.log = log or log_info
        self.shared = shared  # entries missing here are fetched from it, entries created here published to it
        self._verified: set[Path] = set()
        REMEMBERED[:] = [self.root / "digests"]

    def key(self, material: Any) -> str:
        return digest(material)[:32]

    def path(self, kind: str, material: Any) -> Path:
        return self.root / kind / self.key(material)

    def verify(self, path: Path) -> str | None:
        """None when the entry is whole, else what is wrong with it."""
        mf = path / MANIFEST
        if not mf.is_file():
            return "manifest.json is missing"
        try:
            manifest = json.loads(mf.read_text())
            files = manifest["files"]
        except (ValueError, KeyError, TypeError) as e:
            return f"manifest.json is unreadable ({e})"
        for rel, sha in files.items():
            p = path / rel
            if not p.is_file():
                return f"{rel} is missing"
            if file_digest(p) != sha:
                return f"{rel} does not match its hash in the manifest"
        return None

    def read(self, path: Path) -> dict[str, Any]:
        return json.loads((path / MANIFEST).read_text())

    @contextmanager
    def locked(self, kind: str, key: str, label: str) -> Iterator[None]:
        """Hold the lock for ``kind/key``; stale temporary directories of that key are removed."""
        kind_dir = self.root / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(kind_dir / f"{key}.lock"))
        while True:
            try:
                lock.acquire(timeout=30)
                break
            except Timeout:
                self._verified.discard(kind_dir / key)
                self.log(f"waiting for another process to finish {label} ...")
        try:
            for stale in kind_dir.glob(f".tmp-{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a process that died mid-write
            yield
        finally:
            lock.release()

    def lookup(self, kind: str, material: Any) -> Entry | None:
        """The whole entry for ``material``, or None; a corrupt entry is reported and treated as absent."""
        final = self.path(kind, material)
        if not final.exists():
            return self._from_shared(kind, final.name)
        problem = None if final in self._verified else self.verify(final)
        if problem is not None:
            self.log(f"cache entry {final} is corrupt ({problem}); it will be rebuilt")
            return self._from_shared(kind, final.name)
        self._verified.add(final)
        return Entry(final, self.read(final), cached=True)

    def _from_shared(self, kind: str, key: str) -> Entry | None:
        """The entry ``kind/key`` fetched from the shared tier into this store (checked file by file), or None."""
        if self.shared is None:
            return None
        kind_dir = self.root / kind
        tmp = kind_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            manifest = self.shared.fetch(kind, key, tmp, f"{kind}/{key}")
            if manifest is None:
                return None
            manifest.pop("shared")
            final = _install(tmp, kind_dir / key, manifest)
        except SharedCorrupt as e:
            self.log(f"{e}: it is not used; computed here instead")
            return None
        except OSError as e:
            self.log(f"could not fetch {kind}/{key} from {self.shared.url} ({client_error(e)}); computed here instead")
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._verified.add(final)
        return Entry(final, manifest, cached=True)

    def entries(self, kind: str) -> list[Entry]:
        """Every whole entry of ``kind`` (corrupt ones are reported and left out)."""
        kind_dir = self.root / kind
        if self.shared is not None:
            here = {p.name for p in kind_dir.iterdir()} if kind_dir.is_dir() else set()
            for key in self.shared.keys(kind):
                if key not in here:
                    self._from_shared(kind, key)
        if not kind_dir.is_dir():
            return []
        found = []
        for path in sorted(kind_dir.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                problem = None if path in self._verified else self.verify(path)
                if problem is None:
                    self._verified.add(path)
                    found.append(Entry(path, self.read(path), cached=True))
                else:
                    self.log(f"cache entry {path} is corrupt ({problem}); it is ignored and will be recomputed")
        return found

    def put(self, kind: str, material: Any, create: Callable[[Path], dict[str, Any]], label: str) -> Entry:
        """Create the entry with ``create(tmpdir) -> info`` and rename it into place (lock held by caller)."""
        key = self.key(material)
        kind_dir = self.root / kind
        final = kind_dir / key
        tmp = kind_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            start = time.perf_counter()
            info = create(tmp)
            manifest = {
                "kind": kind,
                "key": key,
                "material": material,
                "info": info,
                "seconds": round(time.perf_counter() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_id": uuid.uuid4().hex,
                "files": tree_files(tmp),
            }
            _install(tmp, final, manifest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise QuantEnvironmentError(
                    f"disk full while writing {label} under {kind_dir}: free space (or point "
                    f"--quant-cache-dir elsewhere) and run again; nothing was left behind") from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._verified.add(final)
        if self.shared is not None and self.shared.publish(kind, key, final, manifest, label) is not None:
            adopted = self._from_shared(kind, key)  # another runner published first: every runner uses its entry
            if adopted is not None:
                self.log(f"{label}: another runner published it first; using the published entry")
                return adopted
        return Entry(final, manifest, cached=False)

    def get_or_create(self, kind: str, material: Any, create: Callable[[Path], dict[str, Any]],
                      rebuild: bool = False, label: str | None = None) -> Entry:
        """Return the entry for ``material``, running ``create(tmpdir) -> info`` when it is absent.

        ``create`` writes files into the directory it is given; its returned ``info`` goes into the
        manifest. A corrupt entry is reported, moved aside and created again.
        """
        key = self.key(material)
        label = label or f"{kind}/{key}"
        with self.locked(kind, key, label):
            entry = None if rebuild else self.lookup(kind, material)
            return entry or self.put(kind, material, create, label)
