"""Paired statistics for gates: per-item scores, three verdicts, and repeated looks with alpha spending.

Every gate is reduced to per-item scores ``s_i`` (one per evaluated item, the same items for the base and
the quantized model) whose mean must be at least 0 for the gate to hold; see :mod:`.gates` for how each
threshold becomes a score and docs/THRESHOLDS.md for the formulas. At a look with ``n`` items:

- ``mean = sum(s_i) / n`` and ``se = sd(s_i) / sqrt(n)`` (sample standard deviation, paired differences);
- PASS when ``mean - z * se >= 0`` (the one-sided lower confidence bound clears the threshold),
- FAIL when ``mean + z * se < 0`` (the upper bound is below it), else UNDECIDED,

where ``z`` is the normal quantile for this look's share of ``alpha``. Looks are planned in advance (the first
item count, doubled each time, up to the budget); the alpha spent by look ``k`` is ``alpha * t_k ** 3`` with
``t_k = n_k / budget`` (a power-family spending function), and each look tests at the increment, so by the
union bound the chance of a wrong FAIL (or a wrong PASS) over all looks is at most ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Iterable, Sequence, TypeVar

PASS, FAIL, UNDECIDED = "PASS", "FAIL", "UNDECIDED"


def overall(verdicts: Iterable[str]) -> str:
    """One verdict for several: FAIL if any fails, PASS if all pass, else UNDECIDED (the rule, written once)."""
    seen = set(verdicts)
    return FAIL if FAIL in seen else PASS if seen == {PASS} else UNDECIDED
SPENDING_POWER = 3.0
T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    verdict: str  # PASS, FAIL or UNDECIDED
    mean: float  # mean per-item score (>= 0: the threshold holds)
    se: float  # standard error of that mean
    n: int  # items used
    alpha: float  # the level this look tested at
    z: float  # its critical value

    @property
    def lower(self) -> float:
        return self.mean - self.z * self.se

    @property
    def upper(self) -> float:
        return self.mean + self.z * self.se


def mean_se(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two items)."""
    n = len(scores)
    if n == 0:
        raise ValueError("no items to decide on")
    mean = math.fsum(scores) / n
    if n < 2:
        return mean, 0.0
    var = math.fsum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(var / n)


def decide(scores: Sequence[float], alpha: float) -> Decision:
    """PASS / FAIL / UNDECIDED for 'mean score >= 0' at one-sided level ``alpha`` per side."""
    return judge(*mean_se(scores), len(scores), alpha)


def judge(mean: float, se: float, n: int, alpha: float) -> Decision:
    """PASS / FAIL / UNDECIDED for 'the quantity estimated by ``mean`` (standard error ``se``) is >= 0'."""
    z = NormalDist().inv_cdf(1 - alpha)
    if mean - z * se >= 0:
        verdict = PASS
    elif mean + z * se < 0:
        verdict = FAIL
    else:
        verdict = UNDECIDED
    return Decision(verdict, mean, se, n, alpha, z)


def plan_looks(first: int, budget: int) -> list[int]:
    """Item counts at which to look: ``first``, doubled each time, ending at ``budget`` (60, 120, 250)."""
    if first <= 0 or budget <= 0:
        raise ValueError("item counts must be positive")
    looks = [min(first, budget)]
    while looks[-1] < budget:
        nxt = looks[-1] * 2
        looks.append(nxt if nxt <= 0.75 * budget else budget)  # no tiny last step
    return looks


def spent(alpha: float, fraction: float) -> float:
    """Alpha spent once ``fraction`` of the budget is used (power family, exponent 3)."""
    return alpha * min(max(fraction, 0.0), 1.0) ** SPENDING_POWER


def look_alpha(alpha: float, looks: Sequence[int], k: int) -> float:
    """The level look ``k`` (0-based) of ``looks`` tests at: the increment of the spending function."""
    budget = looks[-1]
    before = spent(alpha, looks[k - 1] / budget) if k > 0 else 0.0
    return spent(alpha, looks[k] / budget) - before


def sequential(decide_at: Callable[[int, float], T], looks: Sequence[int], alpha: float,
               verdict_of: Callable[[T], str]) -> tuple[T, int, int]:
    """Look at ``looks[0]`` items, then more while undecided: (last result, items used, looks taken)."""
    for k, n in enumerate(looks):
        result = decide_at(n, look_alpha(alpha, looks, k))
        if verdict_of(result) != UNDECIDED:
            break
    return result, n, k + 1
