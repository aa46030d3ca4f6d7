"""The bundled base model's preparation (GGUF -> bf16 transformers checkpoint): transformers' own loading against
pytest-quant's, which parses the file once (build/models.py ``_gguf_parsed_once``), side by side.

    python benchmarks/gguf_base.py --repeats 3

Each run converts into an empty store of its own, in a fresh interpreter (imports counted, as a session pays them),
alternating the two ways; prints seconds per run, the medians, their ratio and whether the checkpoints are the same
byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = """
import contextlib, sys, time
start = time.perf_counter()
from pytest_quant.build import models
from pytest_quant.infra.store import Store
if sys.argv[2] == "transformers":
    models._gguf_parsed_once = contextlib.nullcontext
path, _ = models.materialize(models.resolve_model("smollm2-135m-instruct"), Store(sys.argv[1]))
print(f"{time.perf_counter() - start:.2f} {path}")
"""


def files_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name != "manifest.json":
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"transformers": [], "parsed once": []}
    digests: dict[str, set[str]] = {k: set() for k in seconds}
    for _ in range(args.repeats):
        for way in seconds:
            with tempfile.TemporaryDirectory() as store:
                out = subprocess.run([sys.executable, "-c", CODE, store, way.split()[0]], capture_output=True,
                                     text=True, timeout=600, check=True).stdout.split()
                seconds[way].append(float(out[-2]))
                digests[way].add(files_digest(Path(out[-1])))
    print(f"{'way':<14} {'runs (s)':<28} {'median s':>8}")
    for way, runs in seconds.items():
        print(f"{way:<14} {', '.join(f'{s:.1f}' for s in runs):<28} {statistics.median(runs):>8.1f}")
    ratio = statistics.median(seconds["parsed once"]) / statistics.median(seconds["transformers"])
    same = len(digests["transformers"] | digests["parsed once"]) == 1
    print(f"ratio parsed once / transformers: {ratio:.2f}x; checkpoints identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
