"""Measure the bundled tasks' metrics for the base model and its CI-profile W4A16/W8A8 checkpoints.

    .venvs/quant/bin/python scripts/measure_metrics.py [--backends vllm,hf] [--out docs/metrics.json]

Evaluation settings are the guide profile's (5-shot, the first 250 items of each task's default item order;
quant_text 0-shot, 200 documents).
Prints a Markdown table (the one in docs/EVALUATION.md) and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pytest_quant.build.checkpoint import build_checkpoint
from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.gate.scores import aggregate
from pytest_quant.build.models import materialize, resolve_model
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.store import Store
from pytest_quant.evaluate.tasks import item_order, primary_metric

MODEL = "smollm2-135m-instruct"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="vllm,hf")
    ap.add_argument("--out", default="docs/metrics.json")
    ap.add_argument("--hf-arith-limit", type=int, default=100, help="generation is slow with transformers on a CPU")
    args = ap.parse_args()
    store = Store(os.environ.get("QUANT_CACHE_DIR", ".quant-cache"))
    targets = {"base": materialize(resolve_model(MODEL), store)[0]}
    for scheme in ("W4A16", "W8A8"):
        targets[scheme] = build_checkpoint(MODEL, RecipeSpec(scheme, group_size="auto"),
                                           CalibrationSpec("bundled", 32, 256), store).path
    rows = []
    for backend in args.backends.split(","):
        arith = 250 if backend == "vllm" else args.hf_arith_limit
        runs = {EvalRun("quant_facts", 5): item_order("quant_facts", 0)[:250],
                EvalRun("quant_text", 0): item_order("quant_text", 0)[:200],
                EvalRun("quant_arith", 5): item_order("quant_arith", 0)[:arith]}
        for name, path in targets.items():
            res = evaluate(path, runs, store, backend=backend, vllm_python=os.environ.get("QUANT_VLLM_PYTHON"),
                           label=name)
            for run, r in res.items():
                metric = primary_metric(run.task)
                value, stderr = aggregate(metric, r.values(metric, runs[run]))
                rows.append({"backend": backend, "model": name, "task": run.task, "metric": metric, "value": value,
                             "stderr": stderr, "n": len(runs[run]), "fewshot": run.num_fewshot, "seconds": r.seconds,
                             "kernels": r.kernels})
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print("| backend | task | metric | n | base | W4A16 | W8A8 |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for task in ("quant_facts", "quant_arith", "quant_text"):
            cells = {r["model"]: r for r in rows if r["backend"] == backend and r["task"] == task}
            fmt = lambda r: f"{r['value']:.4f}" + (f" ± {r['stderr']:.4f}" if r["stderr"] else "")  # noqa: E731
            print(f"| {backend} | {task} | {cells['base']['metric']} | {cells['base']['n']} | {fmt(cells['base'])} | "
                  f"{fmt(cells['W4A16'])} | {fmt(cells['W8A8'])} |")


if __name__ == "__main__":
    main()
