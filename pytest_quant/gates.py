"""Pass/fail decisions on metrics: plain functions, no pytest, no models.

Every check knows the metric's direction (perplexity, bits per byte and KL are lower-is-better).
The statistics-aware options widen a bound so that only a significant regression fails:
``stderr_k=k`` moves it by k standard errors (combined with the base's when comparing with it);
``wilson=c`` uses the Wilson score interval at confidence ``c`` from the sample count (proportions only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

from .errors import QuantUsageError
from .tasks import higher_is_better

BOUNDED = ("acc", "exact_match", "acc_norm", "agreement", "f1", "mcc", "bleu")


def is_bounded(metric: str) -> bool:
    return metric.split(",")[0] in BOUNDED or metric.split(",")[0].startswith("acc")


@dataclass(frozen=True)
class Threshold:
    min_value: float | None = None  # absolute floor (higher-is-better metrics)
    max_value: float | None = None  # absolute ceiling (lower-is-better metrics)
    max_drop: float | None = None  # worst allowed change from the base model, in the metric's units
    recovery: float | None = None  # quantized/base (base/quantized when lower is better) at least this
    expected: float | None = None  # a stored value, with rtol (vLLM's lm-eval configs)
    rtol: float | None = None
    stderr_k: float | None = None
    wilson: float | None = None

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
        if (self.expected is None) != (self.rtol is None) and self.rtol is not None:
            raise QuantUsageError("rtol needs expected (the stored value it is relative to)")
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise QuantUsageError(f"rtol must be in [0, 1), got {self.rtol}")
        if self.stderr_k is not None and self.stderr_k < 0:
            raise QuantUsageError(f"stderr_k must not be negative, got {self.stderr_k}")
        if self.wilson is not None:
            if not 0 < self.wilson < 1:
                raise QuantUsageError(f"wilson is a confidence level in (0, 1), got {self.wilson}")
            if not bounded:
                raise QuantUsageError(f"wilson applies to proportions (acc, exact_match), not {metric}")

    @property
    def needs_base(self) -> bool:
        return self.max_drop is not None or self.recovery is not None


@dataclass
class Verdict:
    passed: bool
    message: str
    value: float
    base: float | None = None
    recovery: float | None = None
    failures: list[str] = field(default_factory=list)


def wilson_interval(p: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` measured on ``n`` samples."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _slack(t: Threshold, value: float, stderr: float | None, n: int | None, higher: bool,
           base_stderr: float | None = None) -> float:
    """How far the measured value may be from a bound before it counts (statistics-aware options)."""
    slack = 0.0
    if t.stderr_k:
        se = math.sqrt((stderr or 0.0) ** 2 + (base_stderr or 0.0) ** 2)
        slack = max(slack, t.stderr_k * se)
    if t.wilson and n:
        lo, hi = wilson_interval(value, n, t.wilson)
        slack = max(slack, (hi - value) if higher else (value - lo))
    return slack


def check(metric: str, value: float, t: Threshold, stderr: float | None = None, n: int | None = None,
          base: float | None = None, base_stderr: float | None = None) -> Verdict:
    """Apply every bound of ``t`` to ``value``; the verdict's message names each bound and its result."""
    higher = higher_is_better(metric)
    sign = 1 if higher else -1
    failures, notes = [], []
    if t.needs_base and base is None:
        raise QuantUsageError(f"max_drop/recovery for {metric} need the base model's value")
    recovery = None
    if base is not None and value > 0 and base > 0:
        recovery = value / base if higher else base / value

    def bound(name: str, limit: float, against_base: bool = False) -> None:
        slack = _slack(t, value, stderr, n, higher, base_stderr if against_base else None)
        ok = sign * (value - limit) >= -slack - 1e-12
        rel = ">=" if higher else "<="
        text = f"{name}: {value:.4f} {rel} {limit:.4f}" + (f" (slack {slack:.4f})" if slack else "")
        (notes if ok else failures).append(text)

    if t.min_value is not None:
        bound("min_value", t.min_value)
    if t.max_value is not None:
        sign_save = sign
        sign = -1
        bound("max_value", t.max_value)
        sign = sign_save
    if t.max_drop is not None and base is not None:
        bound(f"max_drop {t.max_drop} from base {base:.4f}", base - sign * t.max_drop, against_base=True)
    if t.recovery is not None and base is not None:
        limit = base * t.recovery if higher else base / t.recovery
        bound(f"recovery {t.recovery} of base {base:.4f}", limit, against_base=True)
    if t.expected is not None:
        rtol = t.rtol or 0.0
        limit = t.expected * (1 - rtol) if higher else t.expected * (1 + rtol)
        bound(f"expected {t.expected:.4f} rtol {rtol}", limit)
    head = f"{metric} = {value:.4f}" + (f" ± {stderr:.4f}" if stderr else "") + (f" (n={n})" if n else "")
    if base is not None:
        head += f", base {base:.4f}" + (f", recovery {recovery:.3f}" if recovery is not None else "")
    message = head + ("; FAILED " + "; ".join(failures) if failures else "; passed " + "; ".join(notes))
    return Verdict(not failures, message, value, base, recovery, failures)
