"""How a child process ended, in words: an exit code, or the signal that killed it and what that usually means.

Every subprocess pytest-quant starts (the vLLM runner, its probes, torchrun) reports its end through
:func:`ended`, so a child killed by SIGILL, SIGKILL or SIGSEGV is named as such, with the configuration that ran
(the numerics switches, threads, backend) and, for SIGKILL, the memory that was free when it started.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

MEANING = {
    "SIGILL": "an instruction this CPU or configuration does not allow",
    "SIGKILL": "often out of memory",
    "SIGSEGV": "a crash in native code",
    "SIGBUS": "a crash in native code, or a memory-mapped file that shrank",
    "SIGABRT": "native code aborted",
    "SIGFPE": "an arithmetic fault in native code",
    "SIGTERM": "stopped from outside",
}


def free_gib() -> float | None:
    """Memory available now (MemAvailable), in GiB; None where /proc/meminfo is not there."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return None


def killed_by(code: int) -> str | None:
    """The signal's name when ``code`` says a signal ended the process (Popen's -N, or a shell's 128 + N)."""
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ended(code: int, config: str = "", free_at_start: float | None = None) -> str:
    """``exited with code 1``, or ``killed by SIGILL (an instruction this CPU or configuration does not allow;
    ran with ONEDNN_MAX_CPU_ISA=SSE41, 2 threads, backend vllm)``."""
    name = killed_by(code)
    if name is None:
        return f"exited with code {code}"
    why = MEANING.get(name, "")
    if name == "SIGKILL" and free_at_start is not None:
        why += f": {free_at_start:.1f} GiB free at start"
    details = "; ".join(part for part in (why, f"ran with {config}" if config else "") if part)
    return f"killed by {name}" + (f" ({details})" if details else "")


def signal_note(code: int, config: str = "", free_at_start: float | None = None) -> str:
    """``killed by SIGILL (...): `` when a signal ended the process, else nothing (an exit code says less than the
    child's own error line, which follows)."""
    return f"{ended(code, config, free_at_start)}: " if killed_by(code) else ""


def rank_signals(text: str, free_at_start: float | None = None) -> str:
    """torchrun's lines for ranks a signal killed ('Signal 4 (SIGILL) received by PID 123'), in words."""
    numbers = sorted({int(n) for n in re.findall(r"Signal (\d+) \(SIG\w+\) received by PID", text)})
    return "".join(f"; a rank {ended(-n, free_at_start=free_at_start)}" for n in numbers)
