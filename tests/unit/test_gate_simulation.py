"""The gate's error rates, simulated (no model): paired 0/1 items through the real gate code, CI profile.

The simulated pairs are shaped like this project's own measurement (vLLM, quant_facts, all 389 items,
docs/THRESHOLDS.md): base accuracy 0.70, and the quantized model gets right 3.9% of the items the base gets
wrong. Looks at 60, 120 and 250 items, alpha 0.10 (the CI profile's).
"""

from __future__ import annotations

import random

import pytest

from pytest_quant.session.settings import PROFILES
from pytest_quant.gate.power import rates, simulate
from pytest_quant.gate.stats import FAIL, PASS

CI = PROFILES["ci"]
SETTINGS = {"base_acc": 0.70, "gained": 0.039, "threshold": 0.95, "limit": CI["limit"], "max_items": CI["max_items"],
            "alpha": CI["alpha"]}


def test_false_fail_rate_is_within_alpha_when_recovery_is_above_the_threshold() -> None:
    r = rates(SETTINGS["threshold"] + 0.05, 1000, seed=1, **SETTINGS)
    assert r[FAIL] <= CI["alpha"] + 0.01, r


def test_false_fail_and_false_pass_rates_at_the_threshold_itself_are_within_alpha() -> None:
    """The worst case for a wrong verdict either way: the true recovery exactly at the threshold."""
    r = rates(SETTINGS["threshold"], 1000, seed=2, **SETTINGS)
    assert r[FAIL] <= CI["alpha"] + 0.01 and r[PASS] <= CI["alpha"] + 0.01, r


def test_a_regression_of_eight_points_fails_at_least_80_percent_of_runs_at_the_ci_budget() -> None:
    r = rates(SETTINGS["threshold"] - 0.08, 1000, seed=3, **SETTINGS)
    assert r[FAIL] >= 0.80, r
    assert r[PASS] <= CI["alpha"] + 0.01, r


@pytest.mark.parametrize("recovery", [0.90, 1.0])
def test_items_used_never_exceed_the_budget(recovery: float) -> None:
    rng = random.Random(4)
    assert all(simulate(recovery, rng, **SETTINGS)[1] <= CI["max_items"] for _ in range(200))
