"""What a local model directory's cache key costs per pytest run, with its digests remembered in the store.

    .venvs/quant/bin/python benchmarks/digests.py [--gib 2] [--repeats 2]

Writes a model directory with one weights file of ``--gib`` GiB (random bytes), then runs ``identity()`` of that
directory (what every build and evaluation of a local model keys on) in fresh processes: the first with an empty
store (the file is read and hashed), the next ones with the store it left (the digest is read back). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = ("import sys, time; from pathlib import Path; from pytest_quant.infra.store import Store; "
         "from pytest_quant.build.models import identity, resolve_model; Store(Path(sys.argv[2])); t = time.perf_counter(); "
         "identity(resolve_model(sys.argv[1])); print(time.perf_counter() - t)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="digests-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
        with open(model / "model.safetensors", "wb") as f:
            for _ in range(int(a.gib * 1024)):
                f.write(os.urandom(1 << 20))
        for repeat in range(1, a.repeats + 1):
            store = Path(tmp) / f"store-{repeat}"
            for run in ("empty store", "second process", "third process"):
                out = subprocess.run([sys.executable, "-c", PROBE, str(model), str(store)], capture_output=True,
                                     text=True, timeout=600, check=True).stdout
                rows.append((repeat, run, float(out)))
    print(f"identity() of a local model directory with a {a.gib:g} GiB weights file, one fresh process each")
    print(f"{'repeat':>6} {'run':16} {'seconds':>8}")
    for repeat, run, seconds in rows:
        print(f"{repeat:>6} {run:16} {seconds:>8.3f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark took {time.perf_counter() - start:.0f} s)")
