"""How often a recovery gate says PASS, FAIL or UNDECIDED: simulated paired 0/1 items through the real gate code.

    python -m pytest_quant.gate.power [--base-acc 0.70 --gained 0.039 --threshold 0.95 --limit 60 --max-items 250 --alpha 0.1]

Use it to choose ``limit``, ``max_items`` and ``alpha`` for a task before spending evaluations: each simulated run
draws items whose base answer is right with probability ``base_acc``; the quantized model is right on a
``gained`` share of the items the base gets wrong and loses enough of the base's right answers that its
accuracy is ``recovery * base_acc``. docs/THRESHOLDS.md shows the table for this project's own measurement.
"""

from __future__ import annotations

import argparse
import math
import random
from statistics import NormalDist

from pytest_quant.gate.scores import Threshold, bound_scores, combine
from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, look_alpha, plan_looks, sequential


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


def verdict_shares(mean: float, sd: float, limit: int, budget: int, alpha: float, runs: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """Shares of PASS, FAIL and UNDECIDED over simulated gates whose per-item scores have this mean and standard
    deviation, with looks ``plan_looks(limit, budget)`` and alpha spent as the real gates spend it."""
    looks = plan_looks(min(limit, budget), budget)
    z = [NormalDist().inv_cdf(1 - look_alpha(alpha, looks, k)) for k in range(len(looks))]
    rng = random.Random(seed)
    counts = {PASS: 0, FAIL: 0, UNDECIDED: 0}
    for _ in range(runs):
        total, before, verdict = 0.0, 0, UNDECIDED
        for k, n in enumerate(looks):
            total += rng.gauss(mean * (n - before), sd * math.sqrt(n - before))
            before = n
            m, se = total / n, sd / math.sqrt(n)
            if m - z[k] * se >= 0 or m + z[k] * se < 0:
                verdict = PASS if m - z[k] * se >= 0 else FAIL
                break
        counts[verdict] += 1
    return {v: c / runs for v, c in counts.items()}


def decisive_share(mean: float, sd: float, limit: int, budget: int, alpha: float, runs: int = 2000,
                   seed: int = 0) -> float:
    """Share of simulated gates that reach the verdict the sign of ``mean`` calls for (PASS above 0, FAIL below)."""
    return verdict_shares(mean, sd, limit, budget, alpha, runs, seed)[PASS if mean > 0 else FAIL]


def report_shares(path: str, limit: int, budget: int, alpha: float, runs: int = 4000) -> list[tuple[str, dict]]:
    """For every bound of every gate in a JSON report: its verdict shares if the items it measured are typical,
    i.e. at the measured mean and per-item spread, under the plan ``limit``/``budget``/``alpha``."""
    import json

    out = []
    for g in json.loads(open(path).read())["gates"]:
        for name, d in (g.get("extra") or {}).get("bounds", {}).items():
            sd = d["se"] * math.sqrt(d["n"])
            label = f"{g['scheme']} {g['task']} {name} (margin {d['mean']:+.4f}, sd {sd:.3f}, n {d['n']})"
            out.append((label, verdict_shares(d["mean"], sd, limit, budget, alpha, runs)))
    return out


def items_to_decide(mean: float, sd: float, limit: int, alpha: float, power: float = 0.8,
                    cap: int = 1_000_000) -> int | None:
    """The smallest item budget (``--quant-max-items``) at which a gate with per-item scores of this ``mean`` and
    ``sd`` reaches the verdict its sign calls for in at least ``power`` of simulated runs; None when ``mean`` is 0
    or more than ``cap`` items would be needed."""
    if mean == 0 or sd <= 0:
        return None if mean == 0 else limit
    def enough(n: int) -> bool:
        return decisive_share(mean, sd, limit, n, alpha) >= power
    hi = max(limit, 2)
    while not enough(hi):
        if hi >= cap:
            return None
        hi = min(hi * 2, cap)
    lo = max(limit, hi // 2)
    while hi - lo > max(1, lo // 50):  # within 2%: the estimate is no finer than that
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-acc", type=float, default=0.70)
    p.add_argument("--gained", type=float, default=0.039)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--max-items", type=int, default=250)
    p.add_argument("--alpha", type=float, default=0.10)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--report", help="instead: for each gate of this JSON report, the verdict shares at its measured "
                                    "margin and spread under --limit/--max-items/--alpha")
    a = p.parse_args()
    if a.report:
        print(f"looks {plan_looks(min(a.limit, a.max_items), a.max_items)}, alpha {a.alpha}, 4000 runs per gate")
        for label, shares in report_shares(a.report, a.limit, a.max_items, a.alpha):
            print(f"{label}: " + ", ".join(f"{v} {s:.3f}" for v, s in shares.items()))
        return
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
