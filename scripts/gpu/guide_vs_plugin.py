"""Issue 33 (4a): the seed guide's pipeline as written against ``pytest --quant-model`` doing the same, one GPU.

    python scripts/gpu/guide_vs_plugin.py --arch smollm2-135m --vllm-python PY --out DIR
    python scripts/gpu/guide_vs_plugin.py --arch llama-3.1-8b --vllm-python PY --out DIR   (random weights)

Steps, each timed from nothing to the last answer, with the peak GPU memory above idle (nvidia-smi every 0.5 s):
  guide        the guide's script (load, its preprocessing, ``oneshot`` GPTQ W4A16 one sample at a time, save), then
               ``lm_eval --model vllm --model_args pretrained=...,add_bos_token=true --num_fewshot 5 --limit 250
               --batch_size auto`` on quant_facts, once for the base model and once for the checkpoint (vLLM's and
               lm-eval's defaults: compiled engine, 0.9 of the card)
  plugin       ``pytest --pyargs pytest_quant.suite --quant-model BASE -k test_accuracy`` (guide profile, vLLM) on an
               empty store: the same build and task, the same item count, both BOS variants (the BOS gate's items)
  plugin-warm  the same command again on the store the last step filled
Prints a table with each step's ratio to ``guide``; DIR/guide-vs-plugin-ARCH.json holds the rows. With ``--work W``
the steps can be split over calls on one machine (8B: each fits 10 minutes): W keeps the models, the plugin's store
and the rows of earlier steps, and the table shows them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from batching import bare  # noqa: E402
from scaling import make_model, measured  # noqa: E402

from pytest_quant.build.calibration import CalibrationSpec  # noqa: E402
from pytest_quant.build.checkpoint import _shape_model  # noqa: E402
from pytest_quant.build.models import materialize, resolve_model  # noqa: E402
from pytest_quant.build.recipes import RecipeSpec, check_shapes  # noqa: E402
from pytest_quant.evaluate.tasks import write_task_dir  # noqa: E402
from pytest_quant.infra.store import Store  # noqa: E402


def run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (no shell) with its output in ``log``; its exit code (a timeout raises)."""
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **(env or {})}).returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="smollm2-135m", help="smollm2-135m (the bundled model) or a scaling.py ARCH")
    p.add_argument("--steps", default="guide,plugin,plugin-warm")
    p.add_argument("--models", default="/tmp/scaling-models")
    p.add_argument("--vllm-python", required=True)
    p.add_argument("--timeout", type=float, default=500.0, help="seconds each command may run")
    p.add_argument("--out", default=".")
    p.add_argument("--work", default=None, help="a directory kept between calls (default: a new temporary one)")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a rehearsal of this script (--arch tiny)
    out, tmp = Path(a.out), Path(a.work or tempfile.mkdtemp(prefix="guide-vs-plugin-"))
    tmp.mkdir(parents=True, exist_ok=True)
    log = out / f"guide-vs-plugin-{a.arch}.log"
    bundled = materialize(resolve_model("smollm2-135m-instruct"), Store(tmp / "models"))[0]
    base = bundled if a.arch == "smollm2-135m" else make_model(a.arch, Path(a.models), bundled)
    tasks = write_task_dir(tmp / "tasks")
    store = tmp / "plugin-store"
    installed = any(e.value == "pytest_quant.plugin" for e in entry_points(group="pytest11"))  # else: -p loads it
    kept = tmp / f"rows-{a.arch}.json"
    rows: dict[str, dict] = json.loads(kept.read_text()) if kept.is_file() else {}
    for step in a.steps.split(","):
        if step == "guide":
            ck = tmp / "guide-W4A16"
            recipe = check_shapes(_shape_model(base, False), RecipeSpec("W4A16", group_size="auto"))

            def guide() -> dict:
                built, done, exits = bare(base, recipe, CalibrationSpec("bundled", 512, 2048), ck, device), {}, {}
                if device == "cuda":  # the guide's script is a process of its own: its memory is free for lm_eval
                    torch.cuda.empty_cache()
                print(f"[guide] {a.arch} guide: oneshot {built['seconds']} s", flush=True)
                for name, model in (("base", base), ("quantized", ck)):
                    code, seconds, _ = measured(lambda: run(
                        [a.vllm_python, "-m", "lm_eval", "--model", "vllm",
                         "--model_args", f"pretrained={model},add_bos_token=true", "--tasks", "quant_facts",
                         "--include_path", str(tasks), "--num_fewshot", "5", "--limit", "250",
                         "--batch_size", "auto"], log, a.timeout))
                    done[name], exits[name] = seconds, code
                    print(f"[guide] {a.arch} guide: lm_eval on the {name} model {seconds} s, exit {code}"
                          + (f" (see {log.name})" if code else ""), flush=True)
                return {"build_seconds": built["seconds"], "lm_eval_seconds": done, "lm_eval_exit": exits}
            row, seconds, peaks = measured(guide)
        else:
            cmd = [sys.executable, "-m", "pytest", *([] if installed else ["-p", "pytest_quant.plugin"]),
                   "-p", "no:cacheprovider", "-q", "--pyargs", "pytest_quant.suite", "--quant-model", str(base),
                   "--quant-profile", "guide", "--quant-group-size", "auto", "--quant-backend", "vllm", "-k", "test_accuracy",
                   "--quant-scheme", "W4A16", "--quant-report", str(out / f"guide-vs-plugin-{a.arch}-{step}.json")]
            code, seconds, peaks = measured(lambda: run(cmd, log, a.timeout, {"QUANT_CACHE_DIR": str(store)}))
            row = {"exit": code}  # 1 is a gate's FAIL (random weights at 8B): the time is what is measured
        rows[step] = {"seconds": seconds, "peak_mib": peaks[0] if peaks else None, **row}
        print(f"[guide] {a.arch} {step}: {rows[step]}", flush=True)
        (out / f"guide-vs-plugin-{a.arch}.json").write_text(json.dumps({"arch": a.arch, "rows": rows}, indent=1))
        kept.write_text(json.dumps(rows))
    guide_row = rows.get("guide", {})
    whole = not any(guide_row.get("lm_eval_exit", {}).values())
    ref = guide_row.get("seconds") if whole else None  # no ratio against a guide pipeline that failed a step
    print(f"{'step':<12} {'seconds':>8} {'x guide':>8} {'peak MiB':>9}")
    for step, row in rows.items():
        ratio = f"{row['seconds'] / ref:.2f}" if ref else "-"
        print(f"{step:<12} {row['seconds']:>8} {ratio:>8} {row['peak_mib']!s:>9}")


if __name__ == "__main__":
    main()
