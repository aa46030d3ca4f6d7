"""How a child's end is put in words (infra/exits.py): real children killed by each signal, and torchrun's lines."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pytest_quant.infra.exits import ended, killed_by, rank_signals


@pytest.mark.parametrize("name, words", [
    ("SIGILL", "killed by SIGILL (an instruction this CPU or configuration does not allow; ran with X)"),
    ("SIGKILL", "killed by SIGKILL (often out of memory: 3.5 GiB free at start; ran with X)"),
    ("SIGSEGV", "killed by SIGSEGV (a crash in native code; ran with X)"),
])
def test_a_child_killed_by_a_signal_is_named(name: str, words: str) -> None:
    code = f"import os, signal; os.kill(os.getpid(), signal.{name})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert killed_by(p.returncode) == name
    assert ended(p.returncode, "X", free_at_start=3.5) == words


def test_exit_codes_and_a_shells_signal_convention() -> None:
    assert ended(1) == "exited with code 1"
    assert ended(0) == "exited with code 0"
    assert ended(128 + signal.SIGILL) == "killed by SIGILL (an instruction this CPU or configuration does not allow)"
    assert killed_by(2) is None


def test_torchrun_ranks_killed_by_a_signal_are_named() -> None:
    text = "torch.distributed.elastic.multiprocessing.api: failed (exitcode: -4)\nSignal 4 (SIGILL) received by PID 77"
    assert rank_signals(text, None) == "; a rank killed by SIGILL (an instruction this CPU or configuration does not allow)"
    assert rank_signals("ChildFailedError: exitcode 1", None) == ""
