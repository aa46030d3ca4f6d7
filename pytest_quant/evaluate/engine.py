"""A vLLM runner process (``lm_runner.py --serve`` in vLLM's interpreter), which keeps one model loaded between
requests, and what its log says (kernels, KV-cache scales, what the engine reserved); the pool of a session's runners
is evaluate/engine_pool.py.

A request and its response travel as files (the runner's stdout is its log); a runner that dies, by an exit or a
signal, or runs past its timeout is reported with its own root-cause line and killed with its process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pytest_quant.evaluate import lm_runner
from pytest_quant.infra.errors import QuantError
from pytest_quant.infra.exits import ended, free_gib, root_cause
from pytest_quant.infra.machine import describe, signature
from pytest_quant.infra.progress import EVERY

RUNNER = Path(lm_runner.__file__).resolve()
KERNEL = re.compile(r"\b(\w+(?:LinearKernel|MMKernel))\b")  # vLLM's "Using/Selected X for ..." lines
# What vLLM says of an FP8 KV cache's scales: the checkpoint's (k_scale/v_scale loaded) or 1.0 when it has none
# (vLLM's own lines: "Using KV cache scaling factor 1.0 ...", "... k/v_scale ..."; not its engine-config dump, which
# names kv_cache_dtype and scales in one 3000-character line: seen on an H100, 2026-12-06)
KV_SCALES = re.compile(r"^(?=.*(?:KV cache scaling factor|k/v_scale|\bk_scale\b|\bkv_scale\b)).{0,400}$", re.M)
# What a GPU engine reserved and how long its start took, from vLLM's own log lines (GiB, tokens, seconds); the KV
# cache's line is "Available KV cache memory" when vLLM profiled the card, "reserved X GiB memory for KV Cache" when it
# was given kv_cache_memory_bytes (vLLM 0.26 and 0.32)
RESERVED = {"weights_gib": re.compile(r"Model loading took ([\d.]+) ?GiB"),
            "kv_cache_gib": re.compile(r"Available KV cache memory: ([\d.]+) ?GiB"
                                       r"|reserved ([\d.]+) ?GiB memory for KV"),
            "kv_cache_tokens": re.compile(r"GPU KV cache size: ([\d,]+) tokens"),
            "engine_init_seconds": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)")}


def memory_hint(cause: str, model_args: dict[str, Any]) -> str:
    """What the engine asked for, when vLLM's root cause is about memory (vLLM's own line says what was free)."""
    share = model_args.get("gpu_memory_utilization")
    if share is None or not re.search(r"memory|KV cache", cause, re.I):
        return ""
    return f" (this engine asked for gpu_memory_utilization={share:g}; on a GPU --quant-gpu-memory sets it)"


def kv_scales_used(text: str) -> str:
    """Which k/v scales vLLM's FP8 KV cache used: 1.0 is what it logs when the checkpoint gave none."""
    if "KV cache scaling factor 1.0" in text:
        return "1.0: vLLM found no calibrated k/v scales in the checkpoint"
    return "the checkpoint's calibrated k/v scales"


def reserved(text: str) -> dict[str, float]:
    """What vLLM's log says the engine reserved (the last value of each line; none on a CPU for some)."""
    out = {}
    for name, pattern in RESERVED.items():
        found = [m if isinstance(m, str) else next(g for g in m if g) for m in pattern.findall(text)]
        if found:
            out[name] = float(found[-1].replace(",", ""))
    return out


class EvaluationFailed(QuantError):
    """The evaluation subprocess crashed or ran out of time."""


def run_config(env: dict[str, str], backend: str) -> str:
    """What a child ran with, for the line that says how it ended: machine, threads, numerics switches, backend."""
    return f"{describe(signature(None, env))}, backend {backend}"


# Variables the pytest process itself changes as it runs, which say nothing of how a runner computes: pytest names the
# running test in PYTEST_CURRENT_TEST, llm-compressor's oneshot sets TOKENIZERS_PARALLELISM at the first build. A
# spare runner started before either changed is still the runner asked for (it was discarded at every GPU evaluation).
VOLATILE = ("PYTEST_CURRENT_TEST", "TOKENIZERS_PARALLELISM")
# Libraries the pytest process imports after a spare started add variables of their own (torch's OpenMP:
# KMP_INIT_AT_FORK, KMP_DUPLICATE_LIB_OK; TORCHINDUCTOR_CACHE_DIR): the spare's own imports set them for itself, and
# it is still the runner asked for (the session's first spare was discarded on an H100 for them, 2026-12-06). A
# variable added with one of these prefixes is one vLLM, CUDA or the hub client reads: then it is another runner.
READ_BY_RUNNER = ("VLLM_", "CUDA_", "NCCL_", "HF_", "TRANSFORMERS_", "LD_", "PYTHON")


def identity(python: str, env: dict[str, str], backend: str) -> tuple[str, dict[str, str], str]:
    """What makes two runners the same: the interpreter, the environment but for VOLATILE, the backend."""
    return python, {k: v for k, v in env.items() if k not in VOLATILE}, backend


def same_runner(started: tuple[str, dict[str, str], str], asked: tuple[str, dict[str, str], str]) -> bool:
    """Whether a runner started as ``started`` (an identity) serves one asked for as ``asked``: the same interpreter
    and backend, every variable it started with unchanged, and none added since that a runner reads."""
    (python, env, backend), (asked_python, asked_env, asked_backend) = started, asked
    added = set(asked_env) - set(env)
    return (python, backend) == (asked_python, asked_backend) and all(asked_env.get(k) == v for k, v in env.items()) \
        and not any(k.startswith(READ_BY_RUNNER) for k in added)


class Engine:
    """A vLLM runner process (``lm_runner.py --serve``) that keeps one model loaded between requests."""

    def __init__(self, python: str, env: dict[str, str], backend: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pytest-quant-engine-"))
        self.log = self.dir / "vllm.log"
        self.requests = 0
        self.share = 0.0  # of the GPU, asked by the model it holds (EnginePool)
        self.started_as = identity(python, env, backend)
        self.config, self.free_at_start = run_config(env, backend), free_gib()
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
                how, cause = ended(self.proc.returncode, self.config, self.free_at_start), root_cause(text)
                raise EvaluationFailed(f"vLLM evaluation {how}: {cause}{memory_hint(cause, request['model_args'])}"
                                       f"\nlast output:\n{text[-2000:]}")
            if time.perf_counter() - start > timeout:
                text = self.stacks()
                self.close()
                raise EvaluationFailed(f"vLLM evaluation exceeded --quant-eval-timeout={timeout:g}s and was killed; "
                                       f"last error: {root_cause(text)}\nlast output:\n{text[-2000:]}")
            time.sleep(0.2)
        response = json.loads(resp.read_text())
        text = self.text()
        response["kernels"] = sorted(set(KERNEL.findall(text)) | set(response.get("layer_kernels", [])))
        response["kv_cache"] = sorted({" ".join(m.split()) for m in KV_SCALES.findall(text)})[:3]
        asked = ("enforce_eager", "gpu_memory_utilization", "kv_cache_memory_bytes")
        response["engine"] = {**{k: v for k, v in request["model_args"].items() if k in asked}, **reserved(text)}
        if str(request["model_args"].get("kv_cache_dtype", "")).startswith("fp8"):
            response["engine"]["kv_cache_scales"] = kv_scales_used(text)
        return response

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def stacks(self, wait: float = 2.0) -> str:
        """The runner's log once it has written where each of its threads is (faulthandler, on SIGUSR1)."""
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            return self.text()
        time.sleep(wait)
        return self.text()

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the engine's workers too
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
