"""Which device can run which scheme: one table, and the skip decision built on it.

Capabilities are CUDA compute capabilities times ten (8.0 -> 80). The guides' minimums are used;
vLLM's own code is more lenient in places, noted per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class SchemeSupport:
    min_capability: int
    max_capability: int | None  # first capability that is NOT supported, or None
    cpu_kernel: str | None  # vLLM's CPU kernel for it, None when vLLM's CPU backend has none
    note: str


SUPPORT: dict[str, SchemeSupport] = {
    "W4A16": SchemeSupport(80, None, "CPUWNA16LinearKernel",
                           "guide: INT4 W4A16 needs 8.0+ (Ampere, Ada, Hopper, Blackwell); vLLM's "
                           "CompressedTensorsWNA16.get_min_capability() says 7.5"),
    "W8A8": SchemeSupport(75, 100, "CPUInt8ScaledMMLinearKernel",
                          "guide: INT8 W8A8 needs 7.5+ (Turing to Hopper); not on 10.0+ (Blackwell has no INT8 "
                          "tensor-core GEMM in vLLM's CUTLASS kernels)"),
    "W8A16": SchemeSupport(80, None, None,
                           "vLLM's CPU WNA16 kernel takes 4-bit weights only (uint4, uint4b8): no CPU kernel"),
}


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    capability: int | None = None  # e.g. 90 for an H100
    count: int = 0
    memory_gib: float = 0.0

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"CPU only ({self.name})"
        return f"{self.count} x {self.name} (capability {self.capability / 10:.1f}, {self.memory_gib:.0f} GiB)"


def detect_device() -> Device:
    """The first CUDA device torch sees, or the CPU."""
    import platform

    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            props = torch.cuda.get_device_properties(0)
            return Device("cuda", props.name, major * 10 + minor, torch.cuda.device_count(),
                          props.total_memory / 2**30)
    except ImportError:
        pass
    return Device("cpu", platform.processor() or platform.machine())


def skip_reason(scheme: str | None, device: Device, backend: str, min_capability: int | None = None,
                max_capability: int | None = None, gpus: int | None = None,
                gpu_memory_gib: float | None = None, vllm_support: dict[str, dict[str, str]] | None = None
                ) -> str | None:
    """Why a test of ``scheme`` on ``device`` with ``backend`` cannot run, or None when it can.

    ``vllm_support`` is vLLM's own answer for this device (evaluate.probe_schemes): where it is given, it decides
    for the scheme and the table below is not used. Explicit requirements (from ``quant_requires``) are checked
    on top.
    """
    answer = (vllm_support or {}).get(scheme or "")
    if answer is not None:
        if "error" in answer:
            why = answer["error"] if len(answer["error"]) <= 400 else answer["error"][:400] + " ..."
            return f"{scheme}: vLLM cannot run it on {device.describe()}: {why}"
        scheme = None  # vLLM has a kernel for it: only the explicit requirements remain
    row = SUPPORT.get(scheme) if scheme else None
    need_min = max(filter(None, [min_capability, row.min_capability if row and device.kind == "cuda" else None]),
                   default=None)
    need_max = min(filter(None, [max_capability, row.max_capability if row and device.kind == "cuda" else None]),
                   default=None)
    found = device.describe()
    if gpus and gpus > 1 and device.count < gpus:
        return f"needs {gpus} GPUs, found {found}"
    if gpu_memory_gib and (device.kind != "cuda" or device.memory_gib < gpu_memory_gib):
        return f"needs a GPU with {gpu_memory_gib:g} GiB, found {found}"
    if device.kind == "cpu":
        if min_capability is not None:
            return f"needs a CUDA GPU of capability {min_capability / 10:.1f}+, found {found}"
        if row is not None and backend == "vllm" and row.cpu_kernel is None:
            return f"{scheme}: vLLM's CPU backend has no kernel for it ({row.note}); found {found}"
        return None
    assert device.capability is not None
    if need_min is not None and device.capability < need_min:
        return f"{scheme or 'test'} needs capability {need_min / 10:.1f}+, found {found}"
    if need_max is not None and device.capability >= need_max:
        return f"{scheme or 'test'} is not supported on capability {need_max / 10:.1f}+, found {found}"
    return None



def why_skip(device: Device, backend: str, backend_reason: str, scheme: str | None, requires: Sequence[Any] = (),
             gpus: int = 1, backend_needed: str | None = None,
             vllm_support: dict[str, dict[str, str]] | None = None) -> str | None:
    """Why a test cannot run here, or None: its scheme, GPU count, ``quant_requires`` marks and backend.

    ``requires`` holds parsed ``quant_requires`` marks (scheme, min/max_capability, backend, gpus,
    gpu_memory_gib); ``backend_needed`` is a backend the test itself names (a YAML config's lm-eval model).
    The one place where markers, the shipped suite and YAML items get their skips.
    """
    reason = skip_reason(scheme, device, backend, vllm_support=vllm_support) if scheme else None
    if reason is None and gpus > 1:
        reason = skip_reason(None, device, backend, gpus=gpus)
    for r in requires:
        reason = reason or skip_reason(r.scheme, device, backend, r.min_capability, r.max_capability, r.gpus,
                                       r.gpu_memory_gib, vllm_support)
        backend_needed = backend_needed or r.backend
    if reason is None and backend_needed and backend_needed != backend:
        reason = f"needs the {backend_needed} backend; this session uses {backend} ({backend_reason})"
    return reason


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without initializing CUDA: CUDA_VISIBLE_DEVICES when set, else the NVIDIA
    driver's list (/proc/driver/nvidia/gpus), as indices."""
    import os
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    gpus = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def xdist_worker() -> tuple[int, int]:
    """(this pytest-xdist worker's index, how many workers): (0, 1) outside xdist. From the variables xdist sets in
    each worker (its documented interface where no request or session object is at hand)."""
    import os

    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) % workers, workers


def worker_gpus(worker: int, workers: int, gpus: list[str]) -> list[str]:
    """The GPUs of pytest-xdist worker ``worker`` of ``workers``: an equal group of consecutive GPUs each
    (2 workers on 2 GPUs: one each; 2 workers on 4 GPUs: two each, for a 2-GPU build or tensor-parallel
    engine); with fewer GPUs than workers, workers share them round-robin (one GPU each)."""
    if not gpus:
        return []
    per = len(gpus) // workers
    if per == 0:
        return [gpus[worker % len(gpus)]]
    return gpus[worker * per:(worker + 1) * per]
