"""Files of the store: content digests (of objects, files and trees: what identifies a checkpoint, whoever names
it), the memo of large files' digests, and writes that never leave a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_CONTENT: dict[tuple[str, tuple], str] = {}
REMEMBER_FROM = 64 << 20  # files this large have their digests remembered across processes (remembered_digest)
REMEMBERED: list[Path] = []  # the folder they are remembered in: <store>/digests of the last Store opened


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
    if not REMEMBERED or st.st_size < REMEMBER_FROM:
        return file_digest(path)
    record = REMEMBERED[-1] / digest([str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
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
