"""Where a result was measured: the evaluating machine's signature (CPU, ISA, numerics switches, threads, GPU).

Greedy answers of a small model move with the kernels that compute them (vLLM's CPU build, oneDNN, torch's
vectorized paths, a GPU's kernels), so every stored evaluation and every report records the signature it was
measured on, and a verdict read from results measured elsewhere says so (docs/THRESHOLDS.md, "Across machines").
Library versions are part of the store's keys already; the signature holds what the keys do not.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from pytest_quant.infra.files import digest

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# Environment switches that change which kernels run (emulating another CPU, or vLLM's W4A8 shortcut).
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "VLLM_CPU_INT4_W4A8")


@lru_cache(maxsize=None)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """(model name, the ISA flags of ``ISA_FLAGS`` it has), from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return name, tuple(f for f in ISA_FLAGS if f in flags)


def emulation(env: dict[str, str] | None = None) -> dict[str, str]:
    """The switches set that make this CPU compute as a lesser one (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): part of
    build and evaluation keys, so a run that emulates another machine computes its own results."""
    env = dict(os.environ if env is None else env)
    return {k: env[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if env.get(k)}


# ONEDNN_MAX_CPU_ISA levels that keep bf16 native (AVX-512 BF16 and above); ATEN_CPU_CAPABILITY levels of CPUs without it.
BF16_ONEDNN = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT")
NO_BF16_ATEN = ("default", "avx2")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as the emulation switches let it
    (ATEN_CPU_CAPABILITY=default or ONEDNN_MAX_CPU_ISA=SSE41 make it a CPU without): elsewhere bf16 is emulated."""
    switches = emulation()
    if switches.get("ATEN_CPU_CAPABILITY", "").lower() in NO_BF16_ATEN:
        return False
    if switches.get("ONEDNN_MAX_CPU_ISA", "DEFAULT").upper() not in BF16_ONEDNN:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpu()[1]))


def cpu_dtype() -> str:
    """The dtype models are evaluated in on this CPU: bfloat16 where it is native, float32 elsewhere.

    Measured on a 2-core AVX2 EPYC: a bf16 matmul 25x slower than float32, vLLM's CPU build needing 20 min for the
    base model on 2 x 389 quant_facts items in bf16 (docs/PERFORMANCE.md). vLLM's CPU W4A16 kernel takes bf16 or
    fp16 activations only: on a CPU without native bf16 W4A16 is evaluated with transformers instead
    (session.eval_backend). Under the emulation switches the emulated CPU decides: on an AMX Xeon emulating scalar
    code, transformers in bf16 ran past 540 s where float32 takes about 180 s, and vLLM's bf16 path aborted under
    ONEDNN_MAX_CPU_ISA=SSE41 (docs/THRESHOLDS.md, "The AMX machine").
    """
    return "bfloat16" if native_bf16() else "float32"


def threads(env: dict[str, str]) -> int:
    """CPU threads an evaluation computes with: vLLM's CPU bind list, else OMP_NUM_THREADS, else torch's thread count
    where torch is imported (an xdist worker gets its share of the cores), else the cores."""
    bind = env.get("VLLM_CPU_OMP_THREADS_BIND", "")
    if bind and bind not in ("auto", "all"):
        count = 0
        for part in bind.split("|")[0].split(","):
            lo, _, hi = part.partition("-")
            count += int(hi) - int(lo) + 1 if hi else 1
        return count
    if env.get("OMP_NUM_THREADS", "").isdigit():
        return int(env["OMP_NUM_THREADS"])
    if "torch" in sys.modules:  # an evaluation in this process (transformers) computes with torch's threads
        return sys.modules["torch"].get_num_threads()
    return len(os.sched_getaffinity(0))


def signature(device: Any = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The evaluating machine: CPU model and ISA, the numerics switches set, threads, and the GPU (``device``)."""
    env = dict(os.environ if env is None else env)
    name, isa = _cpu()
    out: dict[str, Any] = {"cpu": name, "isa": list(isa), "threads": threads(env),
                           "switches": {k: env[k] for k in NUMERICS_ENV if env.get(k)}}
    if device is not None and getattr(device, "kind", "cpu") == "cuda":
        out["gpu"] = f"{device.name} (capability {device.capability / 10:.1f})"
    return out


def describe(sig: dict[str, Any]) -> str:
    """One line: ``AMD EPYC [avx2], 2 threads, ATEN_CPU_CAPABILITY=default``."""
    text = f"{sig.get('cpu', '?')} [{' '.join(sig.get('isa', [])) or 'no AVX2'}], {sig.get('threads', '?')} threads"
    if sig.get("gpu"):
        text += f", GPU {sig['gpu']}"
    switches = sig.get("switches") or {}
    return text + "".join(f", {k}={v}" for k, v in sorted(switches.items()))


def same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and digest(a) == digest(b)


def elsewhere_note(measured: list[dict[str, Any]], here: dict[str, Any]) -> str | None:
    """A sentence for a verdict read (in part) from results measured on other machines, or None."""
    other = {digest(m): m for m in measured if m and not same(m, here)}
    if not other:
        return None
    listed = "; ".join(describe(m) for m in other.values())
    return (f"results read from the store were measured on another machine ({listed}; this one: {describe(here)}): "
            "answers can differ between machines (docs/THRESHOLDS.md, 'Across machines')")
