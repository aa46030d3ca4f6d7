"""How often a recovery gate says PASS, FAIL or UNDECIDED: simulated paired 0/1 items through the real gate code.

    python -m pytest_quant.power [--base-acc 0.70 --gained 0.039 --threshold 0.95 --limit 60 --max-items 250 --alpha 0.1]

Use it to choose ``limit``, ``max_items`` and ``alpha`` for a task before spending evaluations: each simulated run
draws items whose base answer is right with probability ``base_acc``; the quantized model is right on a
``gained`` share of the items the base gets wrong and loses enough of the base's right answers that its
accuracy is ``recovery * base_acc``. docs/THRESHOLDS.md shows the table for this project's own measurement.
"""

from __future__ import annotations

import argparse
import random

from .gates import Threshold, bound_scores, combine
from .stats import FAIL, PASS, UNDECIDED, plan_looks, sequential


def simulate(recovery: float, rng: random.Random, base_acc: float = 0.70, gained: float = 0.039,
             threshold: float = 0.95, limit: int = 60, max_items: int = 250, alpha: float = 0.10) -> tuple[str, int]:
    """One paired run: (verdict, items used)."""
    lost = gained + base_acc - recovery * base_acc  # P(base right, quantized wrong)
    if not 0 <= lost <= base_acc:
        raise ValueError(f"recovery {recovery} is not reachable with base accuracy {base_acc} and gained {gained}")
    pairs = []
    for _ in range(max_items):
        u = rng.random()
        pairs.append((1, 1) if u < base_acc - lost else (1, 0) if u < base_acc else (0, 1) if u < base_acc + gained
                     else (0, 0))

    def at(n: int, a: float) -> str:
        base, quant = [b for b, _ in pairs[:n]], [q for _, q in pairs[:n]]
        return combine(bound_scores("acc", Threshold(recovery=threshold), quant, base), a).verdict

    verdict, n, _ = sequential(at, plan_looks(min(limit, max_items), max_items), alpha, lambda v: v)
    return verdict, n


def rates(recovery: float, runs: int = 1000, seed: int = 0, **kwargs: float) -> dict[str, float]:
    """Share of PASS, FAIL and UNDECIDED over ``runs`` simulated runs, and the mean items used."""
    rng = random.Random(seed)
    results = [simulate(recovery, rng, **kwargs) for _ in range(runs)]  # type: ignore[arg-type]
    out = {v: sum(1 for r, _ in results if r == v) / runs for v in (PASS, FAIL, UNDECIDED)}
    out["items"] = sum(n for _, n in results) / runs
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-acc", type=float, default=0.70)
    p.add_argument("--gained", type=float, default=0.039)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--max-items", type=int, default=250)
    p.add_argument("--alpha", type=float, default=0.10)
    p.add_argument("--runs", type=int, default=1000)
    a = p.parse_args()
    kw = {"base_acc": a.base_acc, "gained": a.gained, "threshold": a.threshold, "limit": a.limit,
          "max_items": a.max_items, "alpha": a.alpha}
    print(f"base acc {a.base_acc}, gained {a.gained}, threshold {a.threshold}, looks "
          f"{plan_looks(min(a.limit, a.max_items), a.max_items)}, alpha {a.alpha}, {a.runs} runs each")
    print(f"{'true recovery':>13} {'PASS':>6} {'FAIL':>6} {'UNDECIDED':>9} {'items':>6}")
    for delta in (-0.15, -0.10, -0.08, -0.05, -0.02, 0.0, 0.02, 0.05):
        r = rates(a.threshold + delta, a.runs, **kw)
        print(f"{a.threshold + delta:>13.2f} {r[PASS]:>6.3f} {r[FAIL]:>6.3f} {r[UNDECIDED]:>9.3f} {r['items']:>6.0f}")


if __name__ == "__main__":
    main()
