"""Running gates: plan their evaluations, evaluate item by item, decide with looks, and produce a row.

Every gate evaluates the quantized model and (when its bounds need it) the base on the same items, drawn
in the session's seeded order; it looks first at ``limit`` items and, while UNDECIDED, at more (doubling,
up to ``max_items``), each look at its share of ``alpha`` (:mod:`.stats`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pytest_quant.gate.baseline import Baseline
from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.evaluate.backends.transformers import TransformersBackend
from pytest_quant.evaluate.evaluator import EvalRun
from pytest_quant.gate.scores import Threshold, Verdict, aggregate, bos_loss_scores, bound_scores, combine, is_ratio
from pytest_quant.session.markers import AccuracySpec, BosSpec
from pytest_quant.gate.power import items_to_decide
from pytest_quant.gate.verdict import GateRow, verdict_outcome
from pytest_quant.session.session import Case, QuantSession, Target
from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, overall as overall_verdict, sequential
from pytest_quant.evaluate.tasks import higher_is_better, lm_eval_version, task_digest, task_size

POWER = 0.8  # the share of runs that should decide, in the UNDECIDED hint


def _run(session: QuantSession, spec: AccuracySpec | BosSpec, add_bos_token: bool) -> EvalRun:
    return session.run(spec.task, spec.marker, add_bos_token, spec.apply_chat_template)


def bos_runs(session: QuantSession, spec: BosSpec) -> tuple[EvalRun, EvalRun]:
    return _run(session, spec, True), _run(session, spec, False)


def targets(session: QuantSession, case: Case) -> tuple[Target, Target]:
    """The case's checkpoint and its base model, evaluated with one backend (so their items pair)."""
    backend = session.eval_backend(case.scheme)
    return Target.of(case, backend=backend), Target(case.model, backend=backend)


@dataclass(frozen=True)
class GatePlan:
    """One gate's evaluations, fixed once (at collection finish) and handed to its run: the runs, the items in the
    order the gate draws them, the looks, alpha, the quantized target and the base (one backend, so their items
    pair) with the runs the base is needed on (none when no bound compares with it)."""
    runs: tuple[EvalRun, ...]
    order: tuple[int, ...]
    looks: tuple[int, ...]
    alpha: float
    quantized: Target
    base: Target
    base_runs: tuple[EvalRun, ...]

    def first(self) -> list[int]:
        return list(self.order[:self.looks[0]])


def plan_gate(session: QuantSession, task: str, marker: dict[str, Any], runs: Sequence[EvalRun], quantized: Target,
              base: Target, needs_base: bool) -> GatePlan:
    """The gate's plan; its first look's items are asked for now, so that one model load serves every test's."""
    plan = GatePlan(tuple(runs), tuple(session.order(task, marker)), tuple(session.looks(task, marker)),
                    session.settings.get("alpha", marker), quantized, base, tuple(runs) if needs_base else ())
    for run in plan.runs:
        session.plan(quantized, run, plan.first())
    for run in plan.base_runs:
        session.plan(base, run, plan.first())
    return plan


def plan_accuracy(session: QuantSession, spec: AccuracySpec, case: Case) -> GatePlan:
    return plan_gate(session, spec.task, spec.marker, [_run(session, spec, spec.add_bos_token)],
                     *targets(session, case), spec.threshold.needs_base)


def plan_bos(session: QuantSession, spec: BosSpec, case: Case) -> GatePlan:
    return plan_gate(session, spec.task, spec.marker, bos_runs(session, spec), *targets(session, case),
                     spec.max_extra_loss is not None)


def for_checkpoint(session: QuantSession, plan: GatePlan, case: Case, ck: Checkpoint) -> GatePlan:
    """``plan``, or the same plan on the checkpoint the test received where a fixture replaced the case's."""
    own = plan.quantized
    if session.build(own).path == ck.path:
        return plan
    return dataclasses.replace(plan, quantized=Target(case.model, case.scheme, checkpoint=str(ck.path),
                                                      backend=own.backend))


def _point(metric: str, values: list[Any]) -> float:
    return aggregate(metric, values)[0]


def _recovery(metric: str, q: float, b: float) -> float | None:
    if q <= 0 or b <= 0:
        return None
    return q / b if higher_is_better(metric) else b / q


def _decided(session: QuantSession, verdict: str, decisions: dict[str, Any], **fields: Any) -> GateRow:
    """The row of a gate that reached a verdict: what its test does (UNDECIDED as --quant-undecided says) and each
    bound's decision in the report."""
    extra = {**fields.pop("extra", {}), "bounds": {k: d.__dict__ for k, d in decisions.items()}}
    return GateRow(verdict=verdict, passed=verdict_outcome(verdict, session.settings.get("undecided")), extra=extra,
                   **fields)


def _summary(verdict: Verdict, n: int, looks: int) -> str:
    head = {PASS: "PASS", FAIL: "FAIL", UNDECIDED: "UNDECIDED (the items cannot decide)"}[verdict.verdict]
    return f"{head} on {n} items after {looks} look{'s' if looks > 1 else ''}: {verdict.describe()}"


def to_decide(verdict: Verdict, first: int, alpha: float, available: int | None,
              power: float = POWER) -> tuple[int | None, str]:
    """For an UNDECIDED verdict: (items that would decide it at the observed margins, a sentence saying so)."""
    if verdict.verdict != UNDECIDED:
        return None, ""
    needed = []
    for d in verdict.decisions.values():
        if d.verdict == UNDECIDED:
            needed.append(items_to_decide(d.mean, d.se * math.sqrt(d.n), first, alpha, power))
    if not needed or None in needed:
        return None, "; at the observed margin no feasible item count decides it (the model sits on the threshold)"
    n = max(needed)  # type: ignore[type-var]
    text = (f"; at the observed margin about {n} items would decide it ({power:.0%} of simulated runs, "
            f"alpha {alpha:g}): --quant-max-items {n}")
    if available is not None and n > available:
        text += f", more than the task's {available} items: use a larger task, or a threshold further from it"
    return n, text


def gate(session: QuantSession, plan: GatePlan, run: EvalRun, metric: str, t: Threshold,
         extra: Callable[[list[int], list[Any]], dict[str, list[float]]] | None = None
         ) -> tuple[Verdict, int, int, dict[str, Any]]:
    """Decide ``t`` (and the bounds ``extra`` scores on the quantized values, e.g. a paired baseline) on ``run``
    with the plan's looks: (verdict, items used, looks, the last look's results)."""
    got: dict[str, Any] = {}

    def at(n: int, alpha: float) -> Verdict:
        ids = got["ids"] = list(plan.order[:n])
        got["q"] = session.items(plan.quantized, run, ids)
        got["qv"] = got["q"].values(metric, ids)
        got["b"] = session.items(plan.base, run, ids) if t.needs_base else None
        got["bv"] = got["b"].values(metric, ids) if got["b"] is not None else None
        scores = bound_scores(metric, t, got["qv"], got["bv"])
        if extra is not None:
            scores.update(extra(ids, got["qv"]))
        return combine(scores, alpha)

    verdict, n, taken = sequential(at, list(plan.looks), plan.alpha, lambda v: v.verdict)
    got["to_decide"] = to_decide(verdict, plan.looks[0], plan.alpha, task_size(run.task))
    return verdict, n, taken, got


def _measured(session: QuantSession, scheme: str, *results: Any) -> tuple[list[str], dict[str, Any]]:
    """Notes for results measured on another machine (once each) and for a scheme the session's backend could not
    run here, and
    the quantized model's numerics."""
    notes = list(dict.fromkeys(r.elsewhere for r in results if r is not None and r.elsewhere))
    fallback = session.why_other(scheme)
    return notes + ([fallback] if fallback else []), results[0].numerics


def answers(ids: list[int], **results: Any) -> dict[str, list[Any]]:
    """Each model's answer on ``ids`` (None where not kept), by the names the row's items use."""
    return {name: [r.answers.get(i) for i in ids] for name, r in results.items() if r is not None and r.answers}


def _row(session: QuantSession, model: str, scheme: str, run: EvalRun, metric: str, t: Threshold,
         alpha: float, outcome: tuple[Verdict, int, int, dict[str, Any]], extra_verdicts: list[str],
         extra_messages: list[str], **fields: Any) -> GateRow:
    verdict, n, taken, got = outcome
    q, se = aggregate(metric, got["qv"])
    base = _point(metric, got["bv"]) if got["bv"] is not None else None
    recovery = _recovery(metric, q, base) if base is not None else None
    head = f"{metric} = {q:.4f} ± {se:.4f} (n={n})" + (f", base {base:.4f}, recovery {recovery:.3f}"
                                                        if base is not None and recovery is not None else "")
    overall = overall_verdict([verdict.verdict, *extra_verdicts])
    notes, numerics = _measured(session, scheme, got["q"], got.get("b"))
    return _decided(session, overall, verdict.decisions, model=model, scheme=scheme, task=run.task, metric=metric,
                    message="; ".join([f"{head}; {_summary(verdict, n, taken)}{got['to_decide'][1]}", *extra_messages,
                                       *notes]),
                    threshold=t.describe() + f", alpha={alpha:g}", quantized=q, base=base, recovery=recovery, n=n,
                    looks=taken, backend=got["q"].backend, eval_seconds=got["q"].seconds,
                    extra={"stderr": se, "versions": got["q"].versions, "items_to_decide": got["to_decide"][0],
                           "numerics": numerics,
                           "items": {"ids": got["ids"], "quantized": got["qv"], "base": got["bv"],
                                     "answers": answers(got["ids"], quantized=got["q"], base=got.get("b"))},
                           **fields.pop("extra", {})},
                    **fields)


def run_accuracy(session: QuantSession, spec: AccuracySpec, plan: GatePlan, case: Case, ck: Checkpoint,
                 baseline: Baseline | None) -> GateRow:
    marker, metric, run = spec.marker, spec.metric, plan.runs[0]
    plan = for_checkpoint(session, plan, case, ck)
    key = "|".join([case.model, case.scheme, spec.task, metric, f"bos={run.add_bos_token}"])
    digest = task_digest(spec.task, lm_eval_version())
    rtol = session.settings.get("baseline_rtol")
    scorer, why = baseline.paired(key, metric, rtol, digest) if baseline is not None else (None, "")
    outcome = gate(session, plan, run, metric, spec.threshold, scorer)
    n, got = outcome[1], outcome[3]
    settings = {"num_fewshot": run.num_fewshot, "items": n, "item_seed": session.settings.get("item_seed", marker),
                "add_bos_token": run.add_bos_token, "apply_chat_template": run.apply_chat_template,
                "backend": got["q"].backend, "calibration": session.calibration().__dict__}
    verdicts, messages = [], []
    if baseline is not None:
        q, se = aggregate(metric, got["qv"])
        b_verdict, text = baseline.compare(key, metric, q, se, settings, got["q"].versions, rtol, plan.alpha,
                                           got["q"].machine, paired=scorer is not None, why=why)
        messages.append(text)
        verdicts += [b_verdict] if b_verdict else []
    return _row(session, case.model, case.scheme, run, metric, spec.threshold, plan.alpha, outcome, verdicts, messages,
                key=key, build_seconds=ck.manifest.get("seconds"),
                extra={"settings": settings, "task_digest": digest, "machine": got["q"].machine,
                       "baseline_comparison": None if baseline is None else "paired" if scorer else "unpaired"})


def plan_yaml(session: QuantSession, target: Target, run: EvalRun, marker: dict[str, Any]) -> GatePlan:
    """An llm-compressor config's recovery gate: ``target`` against its base model, paired."""
    base = Target(target.model, gpus=target.gpus, engine=target.engine, backend=target.backend)
    return plan_gate(session, run.task, marker, [run], target, base, True)


def yaml_recovery(session: QuantSession, plan: GatePlan, metric: str, t: Threshold) -> GateRow:
    outcome = gate(session, plan, plan.runs[0], metric, t)
    target = plan.quantized
    return _row(session, target.model, target.scheme or "-", plan.runs[0], metric, t, plan.alpha, outcome, [], [])


def _bos_structure(counts_on: dict[str, int], counts_off: dict[str, int]) -> list[str]:
    failures = []
    not_one = {k: v for k, v in counts_on.items() if k not in ("1", "inserted") and v}
    if not_one:
        failures.append(f"with add_bos_token=True, prompts must start with exactly one BOS; leading-BOS counts "
                        f"{not_one} (of {sum(v for k, v in counts_on.items() if k != 'inserted')} prompts)")
    doubled = {k: v for k, v in counts_off.items() if k in ("2", "3") and v}
    if doubled:
        failures.append(f"with add_bos_token=False, prompts start with two or more BOS: {doubled}")
    return failures


def run_bos(session: QuantSession, spec: BosSpec, plan: GatePlan, case: Case, ck: Checkpoint) -> GateRow:
    metric, (on, off) = spec.metric, plan.runs
    plan = for_checkpoint(session, plan, case, ck)
    q_target, b_target = plan.quantized, plan.base
    got: dict[str, Any] = {}

    def at(n: int, alpha: float) -> Verdict:
        ids = got["ids"] = list(plan.order[:n])
        got["q_on"], got["q_off"] = (session.items(q_target, r, ids) for r in (on, off))
        got["qv"] = [got[k].values(metric, ids) for k in ("q_on", "q_off")]
        scores: dict[str, list[float]] = {}
        if spec.max_delta is not None:
            scores[f"max_delta {spec.max_delta:g}"] = bos_loss_scores(metric, *got["qv"], spec.max_delta)
        if spec.max_extra_loss is not None:
            got["b_on"], got["b_off"] = (session.items(b_target, r, ids) for r in (on, off))
            got["bv"] = [got[k].values(metric, ids) for k in ("b_on", "b_off")]
            scores[f"max_extra_loss {spec.max_extra_loss:g}"] = bos_loss_scores(metric, *got["qv"], spec.max_extra_loss,
                                                                                *got["bv"])
        return combine(scores, alpha) if scores else Verdict(PASS)

    verdict, n, taken = sequential(at, list(plan.looks), plan.alpha, lambda v: v.verdict)
    needed, hint = to_decide(verdict, plan.looks[0], plan.alpha, task_size(spec.task))
    structure = _bos_structure(got["q_on"].bos_prefix_counts, got["q_off"].bos_prefix_counts)
    with_bos, without = (_point(metric, v) for v in got["qv"])
    sign = 1 if higher_is_better(metric) else -1
    loss = sign * (with_bos - without)
    text = f"{metric} with BOS {with_bos:.4f}, without {without:.4f}, loss without BOS {loss:+.4f}"
    if "bv" in got:
        b_on, b_off = (_point(metric, v) for v in got["bv"])
        text += f"; base loses {sign * (b_on - b_off):+.4f}"
    inserted = got["q_on"].bos_prefix_counts.get("inserted", 0)
    if inserted:
        text += (f"; the tokenizer added no BOS itself: pytest-quant prepended one ({inserted} prompts in the "
                 "evaluations these items were read from)")
    overall = FAIL if structure else verdict.verdict
    message = f"{text}; " + ("FAIL: " + "; ".join(structure) if structure else _summary(verdict, n, taken) + hint)
    if is_ratio(metric):
        message += " (losses of perplexity metrics in nats per word/byte)"
    notes, numerics = _measured(session, case.scheme, *(got.get(k) for k in ("q_on", "q_off", "b_on", "b_off")))
    message = "; ".join([message, *notes])
    return _decided(session, overall, verdict.decisions, model=case.model, scheme=case.scheme, task=spec.task,
                    metric=metric, message=message,
                    threshold=f"max_delta={spec.max_delta}, max_extra_loss={spec.max_extra_loss}, alpha={plan.alpha:g}",
                    quantized=with_bos, n=n, looks=taken, backend=got["q_on"].backend,
                    key="|".join([case.model, case.scheme, spec.task, metric, "bos-sensitivity"]),
                    build_seconds=ck.manifest.get("seconds"), eval_seconds=got["q_on"].seconds + got["q_off"].seconds,
                    extra={"quantized_without_bos": without, "bos_loss": loss, "items_to_decide": needed,
                           "numerics": numerics,
                           "items": {"ids": got["ids"], "quantized_with_bos": got["qv"][0],
                                     "quantized_without_bos": got["qv"][1],
                                     **({"base_with_bos": got["bv"][0], "base_without_bos": got["bv"][1]}
                                        if "bv" in got else {}),
                                     "answers": answers(got["ids"], quantized_with_bos=got["q_on"],
                                                        quantized_without_bos=got["q_off"])},
                           "bos_prefix_counts": {"with": got["q_on"].bos_prefix_counts,
                                                 "without": got["q_off"].bos_prefix_counts}})


def run_fidelity(session: QuantSession, case: Case) -> GateRow:
    """KL and top-1 agreement per bundled prompt against the base, decided at --quant-alpha (one look)."""
    s = session.settings
    f = session.fidelity(case)
    max_kl, min_top1, alpha = s.get("max_kl"), s.get("min_top1"), s.get("alpha")
    v = combine({f"max_kl {max_kl:g}": [max_kl - x for x in f["per_prompt_kl"]],
                 f"min_top1 {min_top1:g}": [x - min_top1 for x in f["per_prompt_top1"]]}, alpha)
    overall, decisions = v.verdict, v.decisions
    message = (f"KL {f['kl']:.4f} (max {max_kl:g}), top-1 agreement {f['top1_agreement']:.4f} (min {min_top1:g}) "
               f"over {f['prompts']} prompts, {f['tokens']} tokens; {_summary(v, f['prompts'], 1)}")
    return _decided(session, overall, decisions, model=case.model, scheme=case.scheme, task="fidelity", metric="kl",
                    message=message, threshold=f"max_kl={max_kl:g}, min_top1={min_top1:g}, alpha={alpha:g}",
                    quantized=f["kl"], n=f["prompts"], looks=1, backend=TransformersBackend.name,
                    extra={"top1_agreement": f["top1_agreement"], "tokens": f["tokens"]})
