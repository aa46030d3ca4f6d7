"""The gate's error rates, simulated (no model): paired 0/1 items, looks at 60, 120, 250 items, CI profile alpha.

The simulated model pairs are shaped like this project's own measurement (vLLM, quant_facts, all 389 items,
docs/THRESHOLDS.md): base accuracy 0.70, and the quantized model gets right 3.9% of the items the base
gets wrong. Its accuracy sets how many of the base's right answers it loses.
"""

from __future__ import annotations

import random

import pytest

from pytest_quant.gates import Threshold, bound_scores, combine
from pytest_quant.options import PROFILES
from pytest_quant.stats import FAIL, PASS, UNDECIDED, plan_looks, sequential

BASE_ACC = 0.70
GAINED = 0.039  # P(base wrong, quantized right), measured
THRESHOLD = 0.95
RUNS = 1000
CI = PROFILES["ci"]


def simulate(recovery: float, rng: random.Random) -> tuple[str, int]:
    """One paired run through the real gate code: (verdict, items used)."""
    lost = GAINED + BASE_ACC - recovery * BASE_ACC  # P(base right, quantized wrong)
    both = BASE_ACC - lost
    pairs = []
    for _ in range(CI["max_items"]):
        u = rng.random()
        pairs.append((1, 1) if u < both else (1, 0) if u < BASE_ACC else (0, 1) if u < BASE_ACC + GAINED else (0, 0))

    def at(n: int, alpha: float) -> str:
        base, quant = [b for b, _ in pairs[:n]], [q for _, q in pairs[:n]]
        return combine(bound_scores("acc", Threshold(recovery=THRESHOLD), quant, base), alpha).verdict

    verdict, n, _ = sequential(at, plan_looks(CI["limit"], CI["max_items"]), CI["alpha"], lambda v: v)
    return verdict, n


def rates(recovery: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    outcomes = [simulate(recovery, rng)[0] for _ in range(RUNS)]
    return {v: outcomes.count(v) / RUNS for v in (PASS, FAIL, UNDECIDED)}


def test_false_fail_rate_is_within_alpha_when_recovery_is_above_the_threshold() -> None:
    r = rates(THRESHOLD + 0.05, seed=1)
    assert r[FAIL] <= CI["alpha"] + 0.01, r


def test_false_fail_rate_at_the_threshold_itself_is_within_alpha() -> None:
    """The worst case for a wrong FAIL: the true recovery exactly at the threshold."""
    r = rates(THRESHOLD, seed=2)
    assert r[FAIL] <= CI["alpha"] + 0.01, r


def test_a_regression_of_eight_points_fails_at_least_80_percent_of_runs_at_the_ci_budget() -> None:
    r = rates(THRESHOLD - 0.08, seed=3)
    assert r[FAIL] >= 0.80, r
    assert r[PASS] <= CI["alpha"] + 0.01, r


@pytest.mark.parametrize("recovery", [0.90, 1.0])
def test_items_used_never_exceed_the_budget(recovery: float) -> None:
    rng = random.Random(4)
    assert all(simulate(recovery, rng)[1] <= CI["max_items"] for _ in range(200))
