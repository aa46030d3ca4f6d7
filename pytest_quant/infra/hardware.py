"""The device (GPU or CPU), explicit hardware requirements, and the skip decision built on a backend's own answer.

Capabilities are CUDA compute capabilities times ten (8.0 -> 80). Which scheme runs where is each evaluation
backend's answer (``supports``, evaluate/backends/); this module adds the requirements a test states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


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


def requirement_reason(device: Device, min_capability: int | None = None, max_capability: int | None = None,
                       gpus: int | None = None, gpu_memory_gib: float | None = None) -> str | None:
    """Why ``device`` does not meet explicit requirements (``quant_requires``: capability, GPUs, memory), or None."""
    found = device.describe()
    if gpus and gpus > 1 and device.count < gpus:
        return f"needs {gpus} GPUs, found {found}"
    if gpu_memory_gib and (device.kind != "cuda" or device.memory_gib < gpu_memory_gib):
        return f"needs a GPU with {gpu_memory_gib:g} GiB, found {found}"
    if device.kind == "cpu":
        if min_capability is not None:
            return f"needs a CUDA GPU of capability {min_capability / 10:.1f}+, found {found}"
        return None
    assert device.capability is not None
    if min_capability is not None and device.capability < min_capability:
        return f"test needs capability {min_capability / 10:.1f}+, found {found}"
    if max_capability is not None and device.capability >= max_capability:
        return f"test is not supported on capability {max_capability / 10:.1f}+, found {found}"
    return None


def why_skip(device: Device, backend: Any, backend_reason: str, scheme: str | None, requires: Sequence[Any] = (),
             gpus: int = 1, backend_needed: str | None = None) -> str | None:
    """Why a test cannot run here, or None: its scheme (the ``backend`` object's own answer, ``supports``), GPU
    count, ``quant_requires`` marks and the backend a test names.

    ``requires`` holds parsed ``quant_requires`` marks (scheme, min/max_capability, backend, gpus,
    gpu_memory_gib); ``backend_needed`` is a backend the test itself names (a YAML config's lm-eval model).
    The one place where markers, the shipped suite and YAML items get their skips.
    """
    reason = backend.supports(scheme, device) if scheme else None
    if reason is None and gpus > 1:
        reason = requirement_reason(device, gpus=gpus)
    for r in requires:
        reason = reason or (backend.supports(r.scheme, device) if r.scheme else None) or requirement_reason(
            device, r.min_capability, r.max_capability, r.gpus, r.gpu_memory_gib)
        backend_needed = backend_needed or r.backend
    if reason is None and backend_needed and backend_needed != backend.name:
        reason = f"needs the {backend_needed} backend; this session uses {backend.name} ({backend_reason})"
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


def limit_threads() -> None:
    """Give each pytest-xdist worker its share of the cores, so two workers do not oversubscribe two."""
    workers = xdist_worker()[1]
    if workers > 1:
        import os

        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
