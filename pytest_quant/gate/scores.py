"""Gate decisions on per-item results: plain functions, no pytest, no models.

A metric's per-item values are numbers (acc, exact_match: the metric is their mean) or ``(loglikelihood,
weight)`` pairs (perplexity and bits per byte: the metric is ``exp(-sum(ll) / sum(w))`` or
``-sum(ll) / sum(w) / ln 2``). Every bound of a :class:`Threshold` becomes a per-item score whose mean is at
least 0 exactly when the bound holds, computed on the same items for the base and the quantized model
(paired); :mod:`.stats` decides PASS, FAIL or UNDECIDED from the scores. docs/THRESHOLDS.md has the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.gate.stats import Decision, decide, mean_se, overall
from pytest_quant.evaluate.tasks import Value, higher_is_better

BOUNDED = ("acc", "exact_match", "acc_norm", "agreement", "f1", "mcc", "bleu")
RATIO = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def is_bounded(metric: str) -> bool:
    return metric.split(",")[0] in BOUNDED or metric.split(",")[0].startswith("acc")


def is_ratio(metric: str) -> bool:
    return metric.split(",")[0] in RATIO


@dataclass(frozen=True)
class Threshold:
    min_value: float | None = None  # absolute floor
    max_value: float | None = None  # absolute ceiling
    max_drop: float | None = None  # worst allowed change from the base model, in the metric's units
    recovery: float | None = None  # quantized/base (base/quantized when lower is better) at least this
    expected: float | None = None  # a stored value; with rtol: at least expected * (1 - rtol)
    rtol: float | None = None

    def validate(self, metric: str) -> None:
        if all(v is None for v in (self.min_value, self.max_value, self.max_drop, self.recovery, self.expected)):
            raise QuantUsageError("give at least one of min_value, max_value, max_drop, recovery, expected")
        bounded = is_bounded(metric)
        for name in ("min_value", "max_value", "max_drop", "expected"):
            v = getattr(self, name)
            if v is not None and bounded and not 0 <= v <= 1:
                raise QuantUsageError(f"{name}={v} is outside [0, 1], the range of {metric}")
            if v is not None and v < 0:
                raise QuantUsageError(f"{name} must not be negative, got {v}")
        if self.recovery is not None and not 0 < self.recovery <= 1.5:
            raise QuantUsageError(f"recovery must be in (0, 1.5], got {self.recovery}")
        if self.rtol is not None and self.expected is None:
            raise QuantUsageError("rtol needs expected (the stored value it is relative to)")
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise QuantUsageError(f"rtol must be in [0, 1), got {self.rtol}")
        if is_ratio(metric) and any(getattr(self, n) == 0 for n in ("min_value", "max_value", "expected")):
            raise QuantUsageError(f"a bound of 0 is not possible for {metric}")

    @property
    def needs_base(self) -> bool:
        return self.max_drop is not None or self.recovery is not None

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) is not None)


def aggregate(metric: str, values: Sequence[Value]) -> tuple[float, float]:
    """The metric over ``values`` and its standard error (delta method for ratios)."""
    if not values:
        raise ValueError("no items")
    if not is_ratio(metric):
        return mean_se([float(v) for v in values])
    ll = math.fsum(v[0] for v in values)
    w = math.fsum(v[1] for v in values)
    rate = -ll / w  # nats per weight unit
    resid = [(-v[0] - rate * v[1]) / (w / len(values)) for v in values]  # linearized ratio estimator
    se_rate = mean_se(resid)[1]
    if metric.startswith("bits_per_byte"):
        return rate / math.log(2), se_rate / math.log(2)
    value = math.exp(rate)
    return value, value * se_rate


def _log_units(metric: str, x: float) -> float:
    """A value of a ratio metric in nats per weight unit (what per-item log-likelihoods add up to)."""
    return x * math.log(2) if metric.startswith("bits_per_byte") else math.log(x)


def _scale(values: Sequence[Value]) -> float:
    """Mean weight of ratio items: scores are divided by it, so margins read in nats per unit."""
    return math.fsum(v[1] for v in values) / len(values)


def bound_scores(metric: str, t: Threshold, q: Sequence[Value], b: Sequence[Value] | None) -> dict[str, list[float]]:
    """Per-item scores for each bound of ``t`` (mean >= 0 means the bound holds); ``b`` is paired with ``q``."""
    higher = higher_is_better(metric)
    out: dict[str, list[float]] = {}
    if t.needs_base and (b is None or len(b) != len(q)):
        raise QuantUsageError(f"max_drop/recovery for {metric} need the base model's values on the same items")
    if is_ratio(metric):
        s = _scale(q)
        ll_q = [v[0] for v in q]
        w = [v[1] for v in q]
        ll_b = [v[0] for v in b] if b is not None else None
        if t.min_value is not None:
            out[f"min_value {t.min_value:g}"] = [(-l - wi * _log_units(metric, t.min_value)) / s for l, wi in zip(ll_q, w)]
        if t.max_value is not None:
            out[f"max_value {t.max_value:g}"] = [(l + wi * _log_units(metric, t.max_value)) / s for l, wi in zip(ll_q, w)]
        if t.expected is not None:
            limit = t.expected * (1 + (t.rtol or 0.0))
            out[f"expected {t.expected:g} rtol {t.rtol or 0:g}"] = [(l + wi * _log_units(metric, limit)) / s
                                                                   for l, wi in zip(ll_q, w)]
        if ll_b is not None and t.recovery is not None:
            if metric.startswith("bits_per_byte"):
                out[f"recovery {t.recovery:g}"] = [(lq - lb / t.recovery) / s for lq, lb in zip(ll_q, ll_b)]
            else:
                out[f"recovery {t.recovery:g}"] = [(lq - lb - wi * math.log(t.recovery)) / s
                                                   for lq, lb, wi in zip(ll_q, ll_b, w)]
        if ll_b is not None and t.max_drop is not None:
            if metric.startswith("bits_per_byte"):
                slack = t.max_drop * math.log(2)
            else:  # plug-in: log(1 + max_drop / base perplexity)
                slack = math.log1p(t.max_drop / aggregate(metric, b)[0])  # type: ignore[arg-type]
            out[f"max_drop {t.max_drop:g}"] = [(lq - lb + wi * slack) / s for lq, lb, wi in zip(ll_q, ll_b, w)]
        return out
    sign = 1.0 if higher else -1.0
    rules: dict[str, Any] = {}
    if t.min_value is not None:
        rules[f"min_value {t.min_value:g}"] = lambda x, y: x - t.min_value
    if t.max_value is not None:
        rules[f"max_value {t.max_value:g}"] = lambda x, y: t.max_value - x
    if t.expected is not None:
        limit = t.expected * (1 - sign * (t.rtol or 0.0))
        rules[f"expected {t.expected:g} rtol {t.rtol or 0:g}"] = lambda x, y: sign * (x - limit)
    if b is not None and t.recovery is not None:
        rules[f"recovery {t.recovery:g}"] = ((lambda x, y: x - t.recovery * y) if higher
                                             else (lambda x, y: y - t.recovery * x))
    if b is not None and t.max_drop is not None:
        rules[f"max_drop {t.max_drop:g}"] = lambda x, y: sign * (x - y) + t.max_drop
    qv = [float(v) for v in q]
    bv = [float(v) for v in b] if b is not None else [0.0] * len(qv)
    for name, rule in rules.items():
        out[name] = [rule(x, y) for x, y in zip(qv, bv)] + _pseudo(metric, rule)
    return out


def _pseudo(metric: str, rule: Any) -> list[float]:
    """Two pseudo-items for a metric bounded in [0, 1]: one disagreement each way (quantized right where the
    base is wrong, and the reverse), as Agresti and Min add to a paired table, so that items that all agree
    never make the interval zero-width."""
    return [rule(1.0, 0.0), rule(0.0, 1.0)] if is_bounded(metric) else []


def bos_loss_scores(metric: str, q_on: Sequence[Value], q_off: Sequence[Value], max_loss: float,
                    b_on: Sequence[Value] | None = None, b_off: Sequence[Value] | None = None) -> list[float]:
    """Scores for 'the quantized model loses at most ``max_loss`` without BOS' (more than the base, when given).

    Loss is in the metric's units for mean metrics; for perplexity, in nats per word/byte (log of the ratio).
    """
    def loss(on: Sequence[Value], off: Sequence[Value]) -> list[float]:
        if is_ratio(metric):
            s = _scale(on)
            return [(a[0] - c[0]) / s for a, c in zip(on, off)]  # log-likelihood lost without BOS
        sign = 1.0 if higher_is_better(metric) else -1.0
        return [sign * (float(a) - float(c)) for a, c in zip(on, off)]

    lq = loss(q_on, q_off)
    if b_on is not None and b_off is not None:
        lb = loss(b_on, b_off)
        lq = [x - y for x, y in zip(lq, lb)]
    limit = max_loss * math.log(2) if metric.startswith("bits_per_byte") else max_loss
    pseudo = [limit + 1.0, limit - 1.0] if is_bounded(metric) else []  # one answer lost and one gained (see _pseudo)
    return [limit - x for x in lq] + pseudo


@dataclass
class Verdict:
    verdict: str  # PASS, FAIL or UNDECIDED
    decisions: dict[str, Decision] = field(default_factory=dict)

    def describe(self) -> str:
        return "; ".join(f"{name}: {d.verdict} (margin {d.mean:+.4f}, {100 * (1 - d.alpha):.2f}% bounds "
                         f"[{d.lower:+.4f}, {d.upper:+.4f}])" for name, d in self.decisions.items())


def combine(scores: dict[str, list[float]], alpha: float) -> Verdict:
    """One verdict for several bounds (stats.overall)."""
    decisions = {name: decide(s, alpha) for name, s in scores.items()}
    return Verdict(overall(d.verdict for d in decisions.values()), decisions)


def isclose(measured: float, expected: float, rtol: float) -> bool:
    """vLLM's lm-eval CI check, ``numpy.isclose(expected, measured, rtol)`` (two-sided, relative to measured)."""
    return abs(expected - measured) <= 1e-8 + rtol * abs(measured)
