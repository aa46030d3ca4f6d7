"""The content-addressed store: hashing, once-only creation, corruption, crashes, concurrency."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_quant.infra.errors import QuantEnvironmentError
from pytest_quant.infra.files import MANIFEST, atomic_write_text, content_digest, digest
from pytest_quant.infra.store import Store


def write(out: Path, text: str = "weights") -> dict:
    (out / "model.bin").write_text(text)
    (out / "sub").mkdir()
    (out / "sub" / "config.json").write_text("{}")
    return {"note": "made"}


def test_digest_is_canonical() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_created_once_then_served(tmp_path: Path) -> None:
    store, calls = Store(tmp_path, log=lambda m: None), []
    first = store.get_or_create("k", {"x": 1}, lambda out: calls.append(1) or write(out))
    second = Store(tmp_path, log=lambda m: None).get_or_create("k", {"x": 1}, lambda out: calls.append(1) or write(out))
    assert calls == [1]
    assert (first.cached, second.cached) == (False, True)
    assert first.manifest["build_id"] == second.manifest["build_id"]
    assert set(second.manifest["files"]) == {"model.bin", "sub/config.json"}
    assert second.manifest["info"] == {"note": "made"}


def test_rebuild_replaces_entry(tmp_path: Path) -> None:
    store = Store(tmp_path, log=lambda m: None)
    a = store.get_or_create("k", 1, write)
    b = store.get_or_create("k", 1, lambda out: write(out, "new"), rebuild=True)
    assert a.manifest["build_id"] != b.manifest["build_id"]
    assert (b.path / "model.bin").read_text() == "new"


@pytest.mark.parametrize("damage", ["modify", "truncate", "delete", "manifest"])
def test_corrupt_entry_is_reported_and_rebuilt(tmp_path: Path, damage: str) -> None:
    logs: list[str] = []
    store = Store(tmp_path, log=logs.append)
    entry = store.get_or_create("k", 1, write)
    target = entry.path / "model.bin"
    if damage == "modify":
        target.write_text("weightz")
    elif damage == "truncate":
        target.write_text("")
    elif damage == "delete":
        target.unlink()
    else:
        (entry.path / MANIFEST).write_text("{not json")
    again = Store(tmp_path, log=logs.append).get_or_create("k", 1, write)
    assert not again.cached
    assert any("corrupt" in m for m in logs), logs
    assert (again.path / "model.bin").read_text() == "weights"


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path, log=lambda m: None)

    def boom(out: Path) -> dict:
        write(out)
        raise RuntimeError("calibration exploded")

    with pytest.raises(RuntimeError):
        store.get_or_create("k", 1, boom)
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.endswith(".lock")] == []


def test_disk_full_is_one_clear_message(tmp_path: Path) -> None:
    store = Store(tmp_path, log=lambda m: None)

    def full(out: Path) -> dict:
        (out / "part").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(QuantEnvironmentError, match="disk full .* free space .*nothing was left behind"):
        store.get_or_create("k", 1, full)
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.endswith(".lock")] == []


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from pytest_quant import store as st
    stage = sys.argv[2]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "before-rename":
        real = os.rename
        def rename(a, b):
            if ".tmp-" in str(a) and "-old-" not in str(b):
                die()
            return real(a, b)
        st.os.rename = rename
    def create(out):
        (out / "a.bin").write_text("half")
        if stage == "mid-write":
            die()
        (out / "b.bin").write_text("rest")
        if stage == "after-files":
            die()
        return {}
    st.Store(sys.argv[1], log=lambda m: None).get_or_create("k", 1, create)
""")


@pytest.mark.parametrize("stage", ["mid-write", "after-files", "before-rename"])
def test_sigkill_at_any_point_leaves_no_usable_entry(tmp_path: Path, stage: str) -> None:
    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), stage])
    assert p.returncode == -signal.SIGKILL
    from pytest_quant.infra.verify import main as verify

    assert verify([str(tmp_path)]) == 1  # the user's check names the half-written or unfinished entry
    store = Store(tmp_path, log=lambda m: None)
    assert store.lookup("k", 1) is None
    entry = store.get_or_create("k", 1, write)
    assert not entry.cached
    assert verify([str(tmp_path)]) == 0
    leftovers = [p.name for p in (tmp_path / "k").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def _worker(root: str, counter: str, q: "mp.Queue") -> None:
    def create(out: Path) -> dict:
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        return write(out)

    entry = Store(root, log=lambda m: None).get_or_create("k", {"same": True}, create)
    q.put(entry.manifest["build_id"])


def test_concurrent_processes_create_once(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_worker, args=(str(tmp_path / "s"), str(counter), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    ids = {q.get(timeout=5) for _ in procs}
    assert counter.read_text().count("built") == 1
    assert len(ids) == 1


def test_lock_of_dead_holder_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from filelock import FileLock
        import time
        FileLock({str(tmp_path / 'k' / (Store(tmp_path).key(1) + '.lock'))!r}).acquire()
        print('locked', flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    start = time.perf_counter()
    Store(tmp_path, log=lambda m: None).get_or_create("k", 1, write)
    assert time.perf_counter() - start < 5


def test_atomic_write_never_overwrites_without_permission(tmp_path: Path) -> None:
    target = tmp_path / "baseline.json"
    atomic_write_text(target, json.dumps({"a": 1}))
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "{}", overwrite=False)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_content_digest_sees_a_replaced_file_of_the_same_size_and_time(tmp_path: Path) -> None:
    """Copies keep modification times (shutil.copy2, cp -p): a same-sized replacement must still count."""
    d = tmp_path / "ck"
    d.mkdir()
    (d / "w.bin").write_bytes(b"aaaa")
    first = content_digest(d)
    stamp = (d / "w.bin").stat().st_mtime_ns
    (d / "w.bin").unlink()
    (d / "w.bin").write_bytes(b"bbbb")
    os.utime(d / "w.bin", ns=(stamp, stamp))
    assert content_digest(d) != first


def test_large_files_are_hashed_once_across_processes_and_again_when_written(tmp_path: Path, monkeypatch) -> None:
    """A big model's digest is remembered in the store: a new process reads it back instead of the file; any
    write (even one that keeps the size and the modification time) makes it hash the file again."""
    import pytest_quant.infra.files as store_module

    monkeypatch.setattr(store_module, "REMEMBER_FROM", 1 << 20)
    big = tmp_path / "model" / "w.bin"
    big.parent.mkdir()
    big.write_bytes(b"a" * (2 << 20))
    Store(tmp_path / "store")
    first = store_module.remembered_digest(big)
    assert first == store_module.file_digest(big)
    (record,) = (tmp_path / "store" / "digests").iterdir()
    record.write_text("0" * 64)  # what a remembered answer is read from: the file itself is not read again
    assert store_module.remembered_digest(big) == "0" * 64
    stamp = big.stat().st_mtime_ns
    with open(big, "r+b") as f:  # same size, same modification time: only the change time moves
        f.write(b"b")
    os.utime(big, ns=(stamp, stamp))
    assert store_module.remembered_digest(big) == store_module.file_digest(big) != first
    for r in (tmp_path / "store" / "digests").iterdir():
        r.write_text("not a digest")  # a damaged record is not believed
    assert store_module.remembered_digest(big) == store_module.file_digest(big)
    (tmp_path / "small").write_bytes(b"x")
    assert store_module.remembered_digest(tmp_path / "small") == store_module.file_digest(tmp_path / "small")
    assert len(list((tmp_path / "store" / "digests").iterdir())) == 2  # the small file is never remembered


def test_verify_names_corrupt_and_half_written_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pytest_quant.infra.verify DIR``: every entry checked against its manifest, a flipped byte and a
    killed writer's leftovers named, exit 1; a whole store exit 0; a path that is no store exit 4."""
    from pytest_quant.infra.verify import main as verify

    store = Store(tmp_path, log=lambda m: None)
    good = store.get_or_create("checkpoints", 1, write)
    bad = store.get_or_create("checkpoints", 2, write)
    assert verify([str(tmp_path)]) == 0
    blob = next(p for p in bad.path.iterdir() if p.name != "manifest.json")
    data = bytearray(blob.read_bytes())
    data[0] ^= 1
    blob.write_bytes(bytes(data))
    (tmp_path / "checkpoints" / ".tmp-abc-123-deadbeef").mkdir()
    assert verify([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"corrupt: {bad.path}: {blob.name} does not match its hash in the manifest" in out
    assert "half-written:" in out and str(good.path) not in out and "1 whole entries, 2 corrupt or half-written" in out
    assert verify([str(tmp_path / "nope")]) == 4
