"""The sequential gate loop, written once for every evaluated gate (accuracy, BOS, YAML configs).

A gate looks at the first ``looks[0]`` items of its order and, while UNDECIDED, at more (each look at its share of
``alpha``, :mod:`.stats`). What a look fetches is the caller's (``fetch``: item ids -> values of any type); how the
values become per-item scores of each bound is the caller's too (``score``). The loop returns a typed
:class:`Outcome`: the verdict, the items and looks it used, the last look's values and, for an UNDECIDED verdict,
how many items would decide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from pytest_quant.gate.power import items_to_decide
from pytest_quant.gate.scores import Verdict, combine
from pytest_quant.gate.stats import PASS, UNDECIDED, sequential

V = TypeVar("V")
POWER = 0.8  # the share of runs that should decide, in the UNDECIDED hint


@dataclass(frozen=True)
class Outcome(Generic[V]):
    """A decided gate: its verdict, the items and looks it used, what the last look fetched, and (UNDECIDED) the
    items that would decide it at the observed margins with the sentence that says so."""
    verdict: Verdict
    n: int  # items used
    looks: int  # looks taken
    ids: tuple[int, ...]
    values: V
    needed: int | None = None
    hint: str = ""


def to_decide(verdict: Verdict, first: int, alpha: float, available: int | None,
              power: float = POWER) -> tuple[int | None, str]:
    """For an UNDECIDED verdict: (items that would decide it at the observed margins, a sentence saying so)."""
    if verdict.verdict != UNDECIDED:
        return None, ""
    needed = [items_to_decide(d.mean, d.se * math.sqrt(d.n), first, alpha, power)
              for d in verdict.decisions.values() if d.verdict == UNDECIDED]
    if not needed or None in needed:
        return None, "; at the observed margin no feasible item count decides it (the model sits on the threshold)"
    n = max(x for x in needed if x is not None)
    text = (f"; at the observed margin about {n} items would decide it ({power:.0%} of simulated runs, "
            f"alpha {alpha:g}): --quant-max-items {n}")
    if available is not None and n > available:
        text += f", more than the task's {available} items: use a larger task, or a threshold further from it"
    return n, text


def run_looks(order: Sequence[int], looks: Sequence[int], alpha: float, fetch: Callable[[list[int]], V],
              score: Callable[[list[int], V], dict[str, list[float]]], available: int | None = None) -> Outcome[V]:
    """Fetch the first look's items of ``order``, score them, decide; more items while UNDECIDED. A gate without
    bounds (``score`` returns none) passes on what it fetched."""
    last: list[tuple[list[int], V]] = []

    def at(n: int, look_alpha: float) -> Verdict:
        ids = list(order[:n])
        values = fetch(ids)
        last[:] = [(ids, values)]
        scores = score(ids, values)
        return combine(scores, look_alpha) if scores else Verdict(PASS)

    verdict, n, taken = sequential(at, list(looks), alpha, lambda v: v.verdict)
    ids, values = last[0]
    needed, hint = to_decide(verdict, looks[0], alpha, available)
    return Outcome(verdict, n, taken, tuple(ids), values, needed, hint)
