"""Issue 33: how a vLLM engine should start for a gate, measured through the plugin's own evaluate() on one GPU.

    python scripts/gpu/engine_bench.py --arch smollm2-135m --items 0 --out DIR
    python scripts/gpu/engine_bench.py --arch llama-3.1-8b --items 200 --out DIR   (random weights: time and memory)

Configurations, each on an empty store of its own and a runner started cold (its import of vLLM counted; in a session
a spare runner imports it while the session builds):
  before     the engine as the plugin started it until this issue: engine core in a process of its own, 0.4 of the card
  eager      now: engine core in the runner, the card's share sized to the model (backends/vllm_memory.py)
  compiled   torch.compile and CUDA graphs, an empty compile cache;  compiled2: the same again, the cache warm
  eager2     eager again (the model's files and vLLM's import now in the machine's page cache, as for compiled2)
  hf         transformers on the same GPU
Printed: a table (start, evaluation, items/s, peak GPU MiB above idle, what vLLM reserved) with ratios against
``eager``, the items each other configuration answers differently from eager, and the item count from which compiling
(its cache warm) pays against each eager row.
DIR/engine-ARCH.json holds every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))

from scaling import gpu_memory, make_model, measured  # noqa: E402

from pytest_quant.build.models import materialize, resolve_model  # noqa: E402
from pytest_quant.evaluate.engine_pool import ENGINES  # noqa: E402
from pytest_quant.evaluate.evaluator import EvalRun, evaluate  # noqa: E402
from pytest_quant.evaluate.tasks import item_order  # noqa: E402
from pytest_quant.infra.store import Store  # noqa: E402

CONFIGS = {
    "before": ("vllm", {"gpu_memory_utilization": 0.4, "env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}}),
    "eager": ("vllm", {}),
    "compiled": ("vllm", {"enforce_eager": False}),
    "compiled2": ("vllm", {"enforce_eager": False}),
    "eager2": ("vllm", {}),
    "hf": ("hf", {}),
}


def settle(idle: list[int], within: float = 60.0) -> None:
    """Wait until each GPU is back to ``idle`` MiB (+256): a killed engine's memory is freed after its process ends."""
    end = time.monotonic() + within
    while time.monotonic() < end and any(now > i + 256 for now, i in zip(gpu_memory(), idle)):
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="smollm2-135m", help="smollm2-135m (the bundled model) or a scaling.py ARCH")
    p.add_argument("--items", type=int, default=0, help="quant_facts items (0: all)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--models", default="/tmp/scaling-models")
    p.add_argument("--vllm-python", required=True)
    p.add_argument("--out", default=".")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    base = materialize(resolve_model("smollm2-135m-instruct"), Store(tmp / "models"))[0]
    model = base if a.arch == "smollm2-135m" else make_model(a.arch, Path(a.models), base)
    run = EvalRun("quant_facts", num_fewshot=0)
    ids = item_order("quant_facts", 0)[:a.items or None]
    compile_cache = tmp / "compile-cache"
    rows: dict[str, dict] = {}
    idle = gpu_memory()
    answers: dict[str, dict] = {}
    for name in a.configs.split(","):
        backend, engine = CONFIGS[name]
        engine = json.loads(json.dumps(engine))
        if name.startswith("compiled"):
            engine["env_vars"] = {"VLLM_CACHE_ROOT": str(compile_cache)}
        store = Store(tmp / f"store-{name}")
        res, seconds, peaks = measured(lambda: evaluate(model, {run: ids}, store, backend=backend,
                                                        vllm_python=a.vllm_python, device="cuda", engine=engine,
                                                        label=f"{a.arch} {name}")[run])
        ENGINES.shutdown()  # the next configuration starts cold, its peak measured from an idle card
        settle(idle)
        answers[name] = res.answers
        rows[name] = {"seconds": seconds, "eval_seconds": res.seconds, "start_seconds": round(seconds - res.seconds, 1),
                      "items": len(ids), "items_per_s": round(len(ids) / max(res.seconds, 1e-9), 1),
                      "peak_mib": peaks[0] if peaks else None, "engine": res.engine,
                      "accuracy": round(sum(v["acc"] for v in res.items.values()) / len(res.items), 4)}
        print(f"[engine] {a.arch} {name}: {rows[name]}", flush=True)
        (Path(a.out) / f"engine-{a.arch}.json").write_text(json.dumps({"arch": a.arch, "rows": rows}, indent=1))
    ref = rows.get("eager")
    print(f"\n{a.arch}, {len(ids)} quant_facts items, 0-shot, one GPU (start includes the runner's import of vLLM)")
    print(f"{'config':10} {'start s':>8} {'eval s':>7} {'items/s':>8} {'peak MiB':>9} {'x eager (total)':>16}  reserved")
    for name, r in rows.items():
        ratio = f"{r['seconds'] / ref['seconds']:.2f}x" if ref else "-"
        print(f"{name:10} {r['start_seconds']:>8} {r['eval_seconds']:>7} {r['items_per_s']:>8} {r['peak_mib']!s:>9} "
              f"{ratio:>16}  {r['engine']}")
    for name in (n for n in answers if n != "eager" and "eager" in answers):
        differ = [i for i in ids if answers[name].get(i) != answers["eager"].get(i)]
        print(f"{name}: {len(differ)} of {len(ids)} items answered differently from eager {differ[:10]}")
    for ref_name in (n for n in ("eager", "eager2") if n in rows and "compiled2" in rows):
        print(f"compiling (warm cache) against {ref_name}: {pays(rows[ref_name], rows['compiled2'])}")


def pays(eager: dict, compiled: dict) -> str:
    """From which item count a compiled engine (warm cache) finishes first: its start against its time per item."""
    saved = 1 / eager["items_per_s"] - 1 / compiled["items_per_s"]
    extra = compiled["start_seconds"] - eager["start_seconds"]
    why = f"start {extra:+.1f} s, {saved * 1000:+.2f} ms saved per item"
    if saved <= 0:
        return f"pays at no item count: it is not faster per item ({why})"
    return f"pays from {max(extra, 0) / saved:.0f} items ({why})"


if __name__ == "__main__":
    main()
