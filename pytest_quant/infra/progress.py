"""Progress of long work (calibration, evaluation) as one log line every 15 s, read from tqdm's bars.

llm-compressor and lm-eval show their progress as tqdm bars, which a captured pytest run hides and a CI log shows
as carriage-return noise. Inside :func:`reporting`, a ticker sends the state of the bar that moved last to
``report`` every ``every`` seconds, e.g. ``(3/31): Calibrating: 12/32 (38%), 1.9/s, 6 s elapsed, ETA 10 s``
(llm-compressor's bar names the layer group i/N). Standard library and tqdm only: the vLLM environment's runner
(lm_runner.py, run as a script beside this file) uses it too.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

EVERY = 15.0


def describe(bar: Any) -> str:
    """One line for a tqdm bar: what, done/total, rate, elapsed and what is left."""
    d = bar.format_dict
    n, total, elapsed = d["n"], d["total"], d["elapsed"]
    rate = d["rate"] or (n / elapsed if elapsed else 0)
    text = f"{d['prefix'] or 'working'}: {n}" + (f"/{total} ({100 * n / total:.0f}%)" if total else "")
    text += f", {rate:.1f}/s, {elapsed:.0f} s elapsed"
    if total and rate:
        text += f", ETA {(total - n) / rate:.0f} s"
    return text


@contextmanager
def reporting(report: Callable[[str], None], label: str, every: float = EVERY) -> Iterator[None]:
    """While inside, report ``label`` and the last bar that moved every ``every`` seconds (tqdm patched, restored
    on exit)."""
    from tqdm import std

    update, iterate = std.tqdm.update, std.tqdm.__iter__
    state: dict[str, Any] = {"bar": None}
    start = time.monotonic()

    def patched_update(self: Any, n: float = 1) -> Any:
        if not self.disable:  # a disabled bar counts nothing
            state["bar"] = self
        return update(self, n)

    def patched_iter(self: Any) -> Iterator[Any]:
        for x in iterate(self):
            if not self.disable:
                state["bar"] = self
            yield x

    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            bar = state["bar"]
            try:
                line = describe(bar) if bar is not None else None
            except (AttributeError, KeyError, TypeError, ZeroDivisionError):
                line = None  # a bar being closed: the elapsed time still says the work goes on
            report(f"{label}: {line or f'{time.monotonic() - start:.0f} s elapsed'}")

    std.tqdm.update, std.tqdm.__iter__ = patched_update, patched_iter
    ticker = threading.Thread(target=tick, name="pytest-quant-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        std.tqdm.update, std.tqdm.__iter__ = update, iterate
