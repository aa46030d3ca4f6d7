"""The shared tier behind the local store: entries in object storage (any fsspec URL: ``s3://bucket/prefix``,
``gs://``, ``az://``, a mounted path) that CI runners fetch instead of building, and publish after building.

Layout: ``<url>/<kind>/<key>/<build_id>/<files>`` and ``<url>/<kind>/<key>/manifest.json`` (the local entry's
manifest plus the ``shared`` folder name). The manifest is written last, after every file, with a conditional put
(``If-None-Match: *``; ``O_EXCL`` on a mounted path): an entry exists for readers only once its manifest does, two
runners publishing one key end with the first manifest (the other adopts it), and an upload killed midway leaves
only a folder no manifest names. A conditional put rather than a lock object: nothing stale is left by a runner
that dies, and no second request is needed. Fetched files are checked against the manifest's SHA-256 before use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.infra.files import MANIFEST, file_digest
from pytest_quant.infra.progress import EVERY


class SharedCorrupt(QuantError):
    """A shared entry whose files do not match its manifest."""


def public(url: str) -> str:
    """``url`` without credentials (``scheme://user:secret@host`` loses ``user:secret@``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class Transfer:
    """Bytes moved by one fetch or publish, logged every 15 s (fsspec calls ``relative_update`` per chunk)."""

    def __init__(self, what: str, total: int, log: Callable[[str], None]) -> None:
        self.what, self.total, self.log, self.done = what, total, log, 0
        self.start = self.told = time.perf_counter()

    def callback(self) -> Any:
        from fsspec.callbacks import Callback

        transfer = self

        class Progress(Callback):
            def relative_update(self, inc: int = 1) -> None:
                transfer.add(inc)

        return Progress()

    def add(self, n: int) -> None:
        self.done += n
        if time.perf_counter() - self.told >= EVERY:
            self.told = time.perf_counter()
            self.log(f"{self.what}: {self.done / 2**20:.0f} of {self.total / 2**20:.0f} MiB "
                     f"({self.done / 2**20 / (self.told - self.start):.0f} MiB/s)")

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def client_error(e: BaseException) -> str:
    """One line for an error of the storage client, without its request details."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


class SharedTier:
    """One shared store, opened and checked at the start of a session (exit 4 when it cannot be read)."""

    def __init__(self, url: str, log: Callable[[str], None]) -> None:
        import fsspec

        self.url, self.log = public(url), log
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise QuantUsageError(f"--quant-shared-store {self.url}: {client_error(e)} (s3:// needs s3fs, gs:// "
                                  "gcsfs, az:// adlfs)") from None
        self.root = self.root.rstrip("/")
        self.writable = True
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = local = "file" in protocols
        if local:
            self.fs.makedirs(self.root, exist_ok=True)  # a mounted path
        try:
            self.fs.ls(self.root if local else self.root.split("/", 1)[0], detail=False)  # the bucket or container
        except FileNotFoundError:
            raise QuantUsageError(f"--quant-shared-store {self.url}: the bucket or container does not exist; "
                                  "create it or fix the URL") from None
        except PermissionError as e:
            raise QuantUsageError(f"--quant-shared-store {self.url}: access refused ({client_error(e)}); check the "
                                  "credentials the storage client reads (for s3://: AWS_ACCESS_KEY_ID, "
                                  "AWS_SECRET_ACCESS_KEY, AWS_PROFILE)") from None
        except Exception as e:  # noqa: BLE001  (endpoint unreachable, DNS, TLS: the client's own exception types)
            raise QuantUsageError(f"--quant-shared-store {self.url}: cannot reach it ({client_error(e)}); check the "
                                  "endpoint (AWS_ENDPOINT_URL for S3-compatible servers) and the network") from None

    def _dir(self, kind: str, key: str) -> str:
        return f"{self.root}/{kind}/{key}"

    def manifest(self, kind: str, key: str) -> dict[str, Any] | None:
        """The published manifest of ``kind/key``, or None (not published, or unreadable: then it is reported)."""
        try:
            return json.loads(self.fs.cat_file(f"{self._dir(kind, key)}/{MANIFEST}"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as e:
            self.log(f"shared entry {self.url}/{kind}/{key} has an unreadable manifest ({e}); not used")
            return None

    def keys(self, kind: str) -> list[str]:
        """Keys of ``kind`` that have a folder in the shared tier (published or not)."""
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/{kind}", detail=False))
        except FileNotFoundError:
            return []

    def fetch(self, kind: str, key: str, into: Path, label: str) -> dict[str, Any] | None:
        """Download the published entry ``kind/key`` into ``into`` (files checked against the manifest); its manifest,
        or None when none is published. Raises SharedCorrupt when a file does not match."""

        manifest = self.manifest(kind, key)
        if manifest is None or "shared" not in manifest:
            return None
        files: dict[str, str] = manifest["files"]
        src = f"{self._dir(kind, key)}/{manifest['shared']}"
        total = sum(self.fs.size(f"{src}/{rel}") or 0 for rel in files)
        transfer = Transfer(f"fetching {label} from {self.url}", total, self.log)
        for rel, sha in files.items():
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{src}/{rel}", str(target), callback=transfer.callback())
            if file_digest(target) != sha:
                raise SharedCorrupt(f"shared entry {self.url}/{kind}/{key}: {rel} does not match its SHA-256 in "
                                    "the manifest")
        self.log(f"fetched {label} from {self.url} ({total / 2**20:.1f} MiB in {transfer.seconds():.1f} s)")
        return manifest

    def publish(self, kind: str, key: str, path: Path, manifest: dict[str, Any], label: str) -> dict[str, Any] | None:
        """Upload the local entry at ``path`` and then its manifest, unless ``kind/key`` is already published.
        The manifest another runner published first, or None (this call published it, or publishing is off)."""
        if not self.writable:
            return None
        theirs = self.manifest(kind, key)
        if theirs is not None:
            return theirs
        folder = f"{self._dir(kind, key)}/{manifest['build_id']}"
        transfer = Transfer(f"publishing {label} to {self.url}",
                            sum((path / rel).stat().st_size for rel in manifest["files"]), self.log)
        try:
            for rel in manifest["files"]:
                if self.local:  # object stores have no folders to make
                    self.fs.makedirs(f"{folder}/{rel}".rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path / rel), f"{folder}/{rel}", callback=transfer.callback())
            body = json.dumps({**manifest, "shared": manifest["build_id"]}, indent=2, default=str).encode()
            self.fs.pipe_file(f"{self._dir(kind, key)}/{MANIFEST}", body, mode="create")
        except FileExistsError:
            self._remove(folder)  # another runner's manifest came first: it is the entry
            return self.manifest(kind, key)
        except PermissionError as e:
            self.writable = False
            self._remove(folder)
            self.log(f"WARNING: cannot write to the shared store {self.url} ({client_error(e)}): entries are "
                     "fetched from it but this session publishes none")
            return None
        self.log(f"published {label} to {self.url} ({transfer.total / 2**20:.1f} MiB in {transfer.seconds():.1f} s)")
        return None

    def _remove(self, folder: str) -> None:
        try:
            self.fs.rm(folder, recursive=True)
        except (FileNotFoundError, PermissionError):
            pass
