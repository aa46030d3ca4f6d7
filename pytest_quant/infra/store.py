"""A content-addressed store for checkpoints and evaluation results.

Each entry lives at ``<root>/<kind>/<key>/`` where ``key`` is a hash of everything that determines its
content. Entries are created in a temporary directory, given a ``manifest.json`` with the hash of every
file, and renamed into place, so a reader sees a whole entry or none. A file lock per key makes
concurrent processes (pytest-xdist workers, separate pytest runs) create each entry once; the lock is
an ``fcntl`` lock, released by the kernel when its holder dies, so a crashed builder never blocks.
"""

from __future__ import annotations

import errno
import hashlib
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
from pytest_quant.infra.shared import SharedCorrupt, SharedTier, _why

MANIFEST = "manifest.json"
log = logging.getLogger("pytest_quant")
_CONTENT: dict[tuple[str, tuple], str] = {}
REMEMBER_FROM = 64 << 20  # files this large have their digests remembered across processes (remembered_digest)
_REMEMBERED: list[Path] = []  # the folder they are remembered in: <store>/digests of the last Store opened


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON form."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remembered_digest(path: Path) -> str:
    """:func:`file_digest`, remembered in the store for files of 64 MiB and more, by path, device, inode, size,
    modification and change time: any write changes the change time and no copy keeps it, so a changed file is
    hashed again. A model of 16 GB is then read once, not by every pytest run (docs/GPU.md: 20 s at 8B)."""
    st = path.stat()
    if not _REMEMBERED or st.st_size < REMEMBER_FROM:
        return file_digest(path)
    record = _REMEMBERED[-1] / digest([str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                       st.st_ctime_ns])[:40]
    try:
        value = record.read_text().strip()
    except OSError:
        value = ""
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    value = file_digest(path)
    try:
        atomic_write_text(record, value)
    except OSError:
        pass  # a read-only store still answers, it only hashes again next time
    return value


def entry_files(root: Path) -> list[Path]:
    """Every file below ``root`` except the manifest, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def tree_files(root: Path, remembered: bool = False) -> dict[str, str]:
    """Relative path -> SHA-256 for every file below ``root`` except the manifest (``remembered``: through
    :func:`remembered_digest`; a store entry's own check always reads its files)."""
    hash_file = remembered_digest if remembered else file_digest
    return {p.relative_to(root).as_posix(): hash_file(p) for p in entry_files(root)}


def content_digest(root: Path) -> str:
    """SHA-256 of a directory's files and their contents: what identifies a checkpoint, whoever names it.

    Remembered per process while no file's size, modification or change time (ctime, which no copy keeps) changes.
    """
    root = Path(root).resolve()
    stamp = tuple((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                  for p, st in ((p, p.stat()) for p in entry_files(root)))
    key = (str(root), stamp)
    if key not in _CONTENT:
        _CONTENT[key] = digest(tree_files(root, remembered=True))
    return _CONTENT[key]


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; never a half-written file."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def log_info(message: str) -> None:
    log.info(message, stacklevel=2)


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
        _REMEMBERED[:] = [self.root / "digests"]

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
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
            final = kind_dir / key
            if final.exists():
                trash = kind_dir / f".tmp-{key}-old-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
        except SharedCorrupt as e:
            self.log(f"{e}: it is not used; computed here instead")
            return None
        except OSError as e:
            self.log(f"could not fetch {kind}/{key} from {self.shared.url} ({_why(e)}); computed here instead")
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
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
            if final.exists():
                trash = kind_dir / f".tmp-{key}-old-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
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
        if self.shared is not None and not self.shared.publish(kind, key, final, manifest, label):
            theirs = self.shared.manifest(kind, key)
            if theirs is not None and theirs.get("build_id") != manifest["build_id"]:
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
