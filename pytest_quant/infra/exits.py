"""How a child process ended, in words: an exit code, or the signal that killed it and what that usually means.

Every subprocess pytest-quant starts (the vLLM runner, its probes, torchrun) reports its end through
:func:`ended`, so a child killed by SIGILL, SIGKILL or SIGSEGV is named as such, with the configuration that ran
(the numerics switches, threads, backend) and, for SIGKILL, the memory that was free when it started.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

ROOT_CAUSE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")
# vLLM's prefix on what its engine-core process logs: "(EngineCore_DP0 pid=7) ERROR 12-03 10:11:12 [core.py:7] "
VLLM_PREFIX = re.compile(r"^\s*\(\w+ pid=\d+\)\s*(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+)?"
                         r"(?:\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+)?(?:\[[^\]]*\]\s*)?")
# exception lines that only point elsewhere (vLLM's front end when its engine core failed, a wrapper re-raise)
POINTERS = ("See root cause above", "Engine core initialization failed", "EngineDeadError")
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


def innermost(exc: BaseException) -> str:
    """The first line of the exception at the bottom of ``exc``'s chain (its cause, or the one it was raised while
    handling): what a library wrapping its own error actually hit."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def root_cause(log_text: str) -> str:
    """The line that says what went wrong: the last exception line of a log, except one that only points elsewhere
    (vLLM's ``Engine core initialization failed. See root cause above``), where the last exception line before it
    (vLLM's engine core's own, its log prefix removed) is the cause; else the log's last non-empty line."""
    lines = [VLLM_PREFIX.sub("", line).rstrip() for line in log_text.splitlines() if line.strip()]
    found = [line.strip() for line in lines if (m := ROOT_CAUSE.match(line)) and m.group(1) != "KeyboardInterrupt"]
    causes = [line for line in found if not any(p in line for p in POINTERS)]
    if causes:
        return causes[-1]
    if found:
        return found[-1]
    return lines[-1].strip() if lines else "no output"
