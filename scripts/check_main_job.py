"""Check the main job's report against the verdicts known for the bundled model (a known-answer test).

    python scripts/check_main_job.py quant-report.json [--scheme W4A16] [--gate accuracy]

(``--scheme`` / ``--gate``: check that scheme's or kind's gates only (accuracy, bos, fidelity), for a run of part of
the suite.) The report is read as the versioned report model (pytest_quant.plugin.report.Report): one of another shape
fails the check.

The rule, the same for every gate (docs/THRESHOLDS.md, "Across machines"): a gate's expected verdict is required
only where it holds in at least 99% of simulated runs (`python -m pytest_quant.gate.power --report`) at the smallest
margin measured on any machine or emulated configuration; elsewhere the check requires only that the opposite
verdict does not occur (its chance is bounded by the gate's alpha and is below 1% at every measured margin).
No threshold is moved for this; UNDECIDED stays an honest answer near a threshold.

| gate | smallest measured margin | P(expected verdict) | required |
|---|---|---|---|
| W4A16 accuracy (recovery 0.95) | -0.080 | FAIL 0.998 | FAIL |
| W8A8 accuracy (recovery 0.95) | +0.028 | PASS 0.90 | not FAIL (P(FAIL) 0.000) |
| W4A16 BOS (max_extra_loss 0.05) | +0.019 | PASS 0.38 | not FAIL (P(FAIL) 0.006) |
| W8A8 BOS (max_extra_loss 0.05) | +0.018 | PASS < 0.5 | not FAIL |
| fidelity, both schemes (KL 0.5, top-1 0.7) | +0.059 (top-1, W4A16) | PASS 1.000 | PASS |

Exit 0 when the report says exactly that, 1 (naming each difference) otherwise.
"""

from __future__ import annotations

import sys

from pytest_quant.plugin.report import Report

FAIL, PASS, UNDECIDED = "FAIL", "PASS", "UNDECIDED"
ALLOWED = {("W4A16", "accuracy"): {FAIL}, ("W8A8", "accuracy"): {PASS, UNDECIDED},
           ("W4A16", "bos"): {PASS, UNDECIDED}, ("W8A8", "bos"): {PASS, UNDECIDED},
           ("W4A16", "fidelity"): {PASS}, ("W8A8", "fidelity"): {PASS}}


def kind(gate: dict) -> str:
    if gate["task"] == "fidelity":
        return "fidelity"
    return "bos" if (gate.get("key") or "").endswith("bos-sensitivity") else "accuracy"


def main(path: str, scheme: str | None = None, gate: str | None = None) -> int:
    report = Report.read(path).model_dump()
    wanted = lambda name: scheme in (None, name[0]) and gate in (None, name[1])  # noqa: E731
    expected = {k: v for k, v in ALLOWED.items() if wanted(k)}
    problems = []
    seen = set()
    for g in report["gates"]:
        name = (g["scheme"], kind(g))
        if not wanted(name):
            continue
        seen.add(name)
        allowed = expected.get(name)
        if allowed is None or g["verdict"] not in allowed:
            problems.append(f"{' '.join(name)}: {g['verdict']} (allowed: {', '.join(sorted(allowed or {'no gate'}))})"
                            f": {g['message']}")
    problems += [f"{' '.join(n)}: no gate ran" for n in expected.keys() - seen]
    for p in problems:
        print(f"[check] {p}")
    print(f"[check] {len(report['gates'])} gates, {len(problems)} unexpected")
    return 1 if problems or not report["gates"] else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    option = lambda flag: args[args.index(flag) + 1] if flag in args else None  # noqa: E731
    sys.exit(main(args[0], option("--scheme"), option("--gate")))
