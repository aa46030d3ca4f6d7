"""Gate decisions on recorded or constructed per-item values: paired scores, looks, alpha, thresholds."""

from __future__ import annotations

import math

import pytest

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.gate.scores import Threshold, aggregate, bos_loss_scores, bound_scores, combine, isclose
from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, decide, judge, look_alpha, plan_looks, sequential


def verdict(metric: str, t: Threshold, q: list, b: list | None = None, alpha: float = 0.05) -> str:
    return combine(bound_scores(metric, t, q, b), alpha).verdict


def test_paired_gates_on_zero_one_items() -> None:
    base = [1] * 80 + [0] * 20
    same = list(base)
    assert verdict("acc", Threshold(recovery=0.95), same, base) == PASS  # identical answers: margin 0.05 * 0.8
    worse = [0] * 30 + [1] * 50 + [0] * 20  # lost 30 of 80 right answers, paired
    assert verdict("acc", Threshold(recovery=0.95), worse, base) == FAIL
    noisy = [0] * 6 + [1] * 74 + [1] * 3 + [0] * 17  # 6 lost, 3 gained on 100 items: too few to tell 0.95
    assert verdict("acc", Threshold(recovery=0.95), noisy, base) == UNDECIDED
    assert verdict("acc", Threshold(max_drop=0.05), worse, base) == FAIL
    assert verdict("acc", Threshold(min_value=0.5), same) == PASS
    assert verdict("acc", Threshold(min_value=0.9), same) == FAIL
    assert verdict("acc", Threshold(expected=0.85, rtol=0.1), same) == UNDECIDED  # 0.8 vs 0.765, n=100
    with pytest.raises(QuantUsageError, match="need the base model's values on the same items"):
        bound_scores("acc", Threshold(recovery=0.9), same, base[:50])


def test_pairing_decides_where_independent_samples_cannot() -> None:
    """The same difference of means; paired items that agree almost everywhere make it decidable."""
    base = [1] * 140 + [0] * 60
    q = [0] * 16 + [1] * 124 + [0] * 60  # 16 items lost, nothing else changed: recovery 0.886
    d = combine(bound_scores("acc", Threshold(recovery=0.95), q, base), 0.05).decisions["recovery 0.95"]
    independent_se = (aggregate("acc", q)[1] ** 2 + (0.95 * aggregate("acc", base)[1]) ** 2) ** 0.5
    assert d.verdict == FAIL and d.se < independent_se / 2


def test_perplexity_gates_work_on_loglikelihood_pairs() -> None:
    words = [100.0] * 50
    base = [[-100 * math.log(20.0) + (1 if i % 2 else -1), w] for i, w in enumerate(words)]
    value, se = aggregate("word_perplexity", base)
    assert value == pytest.approx(20.0, rel=1e-3) and se > 0
    assert aggregate("bits_per_byte", base)[0] == pytest.approx(math.log(20.0) / math.log(2), rel=1e-3)
    worse = [[ll - 100 * math.log(25 / 20), w] for ll, w in base]  # perplexity 25: recovery 0.8
    assert aggregate("word_perplexity", worse)[0] == pytest.approx(25.0, rel=1e-3)
    assert verdict("word_perplexity", Threshold(recovery=0.9), worse, base) == FAIL
    assert verdict("word_perplexity", Threshold(recovery=0.75), worse, base) == PASS
    assert verdict("word_perplexity", Threshold(max_value=30.0), worse) == PASS
    assert verdict("word_perplexity", Threshold(max_value=22.0), worse) == FAIL
    assert verdict("word_perplexity", Threshold(max_drop=3.0), worse, base) == FAIL
    assert verdict("word_perplexity", Threshold(max_drop=8.0), worse, base) == PASS


def test_bos_loss_scores() -> None:
    on = [1] * 60 + [0] * 40
    off = [0] * 20 + [1] * 40 + [0] * 40  # 20 right answers lost without BOS
    assert decide(bos_loss_scores("acc", on, off, 0.05), 0.05).verdict == FAIL
    assert decide(bos_loss_scores("acc", on, off, 0.05, on, off), 0.05).verdict == PASS  # base loses the same


def test_looks_and_alpha_spending() -> None:
    assert plan_looks(60, 250) == [60, 120, 250]
    assert plan_looks(60, 389) == [60, 120, 240, 389]
    assert plan_looks(250, 250) == [250]
    assert plan_looks(300, 250) == [250]
    looks = [60, 120, 250]
    parts = [look_alpha(0.05, looks, k) for k in range(3)]
    assert sum(parts) == pytest.approx(0.05) and parts[0] < parts[1] < parts[2]
    seen = []
    result, n, taken = sequential(lambda n, a: seen.append(n) or (UNDECIDED if n < 120 else PASS), looks, 0.05,
                                  lambda v: v)
    assert (result, n, taken, seen) == (PASS, 120, 2, [60, 120])
    assert judge(0.0, 0.0, 10, 0.05).verdict == PASS  # exactly at the threshold holds


def test_threshold_validation() -> None:
    with pytest.raises(QuantUsageError, match=r"outside \[0, 1\]"):
        Threshold(min_value=75).validate("acc")
    Threshold(max_value=75).validate("word_perplexity")
    with pytest.raises(QuantUsageError, match="at least one"):
        Threshold().validate("acc")
    with pytest.raises(QuantUsageError, match="rtol needs expected"):
        Threshold(min_value=0.1, rtol=0.1).validate("acc")
    assert isclose(0.70, 0.75, 0.08) and not isclose(0.60, 0.75, 0.08) and not isclose(0.90, 0.75, 0.08)




def test_metric_direction_is_lm_evals_own() -> None:
    """lm-eval's registry decides (ter and brier_score are lower-is-better with no hint in their names); the name's
    words only for metrics lm-eval does not register."""
    from pytest_quant.evaluate.tasks import higher_is_better

    assert higher_is_better("acc") and higher_is_better("exact_match,strict-match") and higher_is_better("f1")
    assert not higher_is_better("word_perplexity") and not higher_is_better("bits_per_byte")
    assert not higher_is_better("ter") and not higher_is_better("brier_score")
    assert not higher_is_better("kl") and not higher_is_better("train_loss") and higher_is_better("my_score")
