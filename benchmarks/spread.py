"""How far verdicts move across machines: the shipped suite under emulated CPU configurations, one store each.

    python benchmarks/spread.py --configs native,scalar,one-thread --out docs/spread [--reuse]

For each configuration (environment switches that change which kernels compute: torch's ATEN_CPU_CAPABILITY,
oneDNN's ONEDNN_MAX_CPU_ISA, the thread count), in a store of its own so that it builds its checkpoints too:

1. ``full``: the main job's suite (CI profile, vLLM) with every gate at the whole task in one look
   (``--quant-limit 389 --quant-max-items 389``): every item evaluated, the verdict at the full task;
2. ``plan``: the same suite with the shipped CI plan (looks from the store, nothing evaluated again).

It writes both JSON reports per configuration under --out and prints two tables: each gate's values, margin,
bounds and verdict per configuration, and the spread across configurations (range of accuracies and paired
margins, items whose answer differs between configurations). Every pytest run has a timeout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venvs/quant/bin/python"
TASK_ITEMS = 389  # quant_facts' test split

CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "one-thread": {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"},
    "w4a8": {"QUANT_CPU_W4A8": "1"},  # vLLM's W4A8 shortcut (does something on AMX CPUs only)
}


def suite(config: str, store: Path, report: Path, extra: list[str], timeout: float) -> float:
    env = {**os.environ, **CONFIGS[config], "QUANT_CACHE_DIR": str(store),
           "QUANT_VLLM_PYTHON": os.environ.get("QUANT_VLLM_PYTHON", str(ROOT / ".venvs/vllm/bin/python"))}
    cmd = [str(PYTHON), "-m", "pytest", "--pyargs", "pytest_quant.suite", "--quant-profile", "ci",
           "--quant-group-size", "auto", "--quant-backend", "vllm", "--quant-report", str(report), "-q",
           "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"[spread] {config}: the suite ran past {timeout:g}s and was stopped")
    (report.parent / f"{report.stem}.log").write_text(p.stdout + p.stderr)
    if not report.is_file():
        sys.exit(f"[spread] {config}: no report (exit {p.returncode}); see {report.parent / (report.stem + '.log')}")
    return time.perf_counter() - start


def kind(gate: dict[str, Any]) -> str:
    if gate["task"] == "fidelity":
        return "fidelity"
    return "bos" if (gate.get("key") or "").endswith("bos-sensitivity") else "accuracy"


def gates(report: Path) -> dict[str, dict[str, Any]]:
    return {f"{g['scheme']} {kind(g)}": g for g in json.loads(report.read_text())["gates"]}


def bounds(g: dict[str, Any]) -> tuple[float, float, float]:
    """(margin, lower, upper) of the gate's tightest bound."""
    b = g["extra"].get("bounds") or {}
    if not b:
        return float("nan"), float("nan"), float("nan")
    d = min(b.values(), key=lambda d: d["mean"] - d["z"] * d["se"])
    return d["mean"], d["mean"] - d["z"] * d["se"], d["mean"] + d["z"] * d["se"]


def answers(g: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """Per-item values of each series in a gate (quantized, base, with/without BOS)."""
    items = g["extra"].get("items") or {}
    ids = items.get("ids") or []
    return {name: dict(zip(ids, values)) for name, values in items.items() if name != "ids" and values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="native,scalar,one-thread")
    p.add_argument("--out", type=Path, default=ROOT / "docs/spread")
    p.add_argument("--stores", type=Path, default=Path("/tmp/pytest-quant-spread"))
    p.add_argument("--plan", default="", help="extra pytest arguments for the 'plan' run (e.g. --quant-max-items 389)")
    p.add_argument("--reuse", action="store_true", help="keep reports already written under --out")
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()
    configs = a.configs.split(",")
    a.out.mkdir(parents=True, exist_ok=True)
    for c in configs:
        store = a.stores / c
        for name, extra in (("full", ["--quant-limit", str(TASK_ITEMS), "--quant-max-items", str(TASK_ITEMS)]),
                            ("plan", a.plan.split())):
            report = a.out / f"{c}-{name}.json"
            if a.reuse and report.is_file():
                continue
            took = suite(c, store, report, extra, a.timeout)
            print(f"[spread] {c} {name}: {took:.0f}s", flush=True)

    print(f"\n{'config':<11} {'gate':<17} {'base':>6} {'quant':>6} {'margin':>8} {'bounds (full task)':>19} "
          f"{'full':>9} {'CI plan':>9} {'items':>5}")
    full = {c: gates(a.out / f"{c}-full.json") for c in configs}
    plan = {c: gates(a.out / f"{c}-plan.json") for c in configs}
    for c in configs:
        for name, g in full[c].items():
            m, lo, hi = bounds(g)
            q = plan[c].get(name, {})
            print(f"{c:<11} {name:<17} {g['base'] if g['base'] is not None else float('nan'):>6.3f} "
                  f"{g['quantized']:>6.3f} {m:>+8.4f} [{lo:+.4f}, {hi:+.4f}] {g['verdict']:>9} "
                  f"{q.get('verdict', '-'):>9} {q.get('n') or '-':>5}")
    print(f"\n{'gate':<17} {'base range':>15} {'quant range':>15} {'margin range':>19} {'items differing between configs'}")
    for name in full[configs[0]]:
        rows = [full[c][name] for c in configs if name in full[c]]
        base = [r["base"] for r in rows if r["base"] is not None]
        quant = [r["quantized"] for r in rows]
        margins = [bounds(r)[0] for r in rows]
        flips = []
        for x, y in itertools.combinations([answers(r) for r in rows], 2):
            for series in x:
                common = set(x[series]) & set(y.get(series, {}))
                flips.append(f"{series} {sum(x[series][i] != y[series][i] for i in common)}/{len(common)}")
        span = lambda v: f"{min(v):.3f}-{max(v):.3f}" if v else "-"  # noqa: E731
        print(f"{name:<17} {span(base):>15} {span(quant):>15} {min(margins):+.4f}..{max(margins):+.4f} "
              f"{'; '.join(sorted(set(flips)))[:200]}")


if __name__ == "__main__":
    main()
