"""Running gates in a session: plan their evaluations, fetch items from the session, and hand the looks to the
gate layer (:mod:`pytest_quant.gate.loop`), which decides, and :mod:`pytest_quant.gate.outcomes`, which writes the row.

Every gate evaluates the quantized model and (when its bounds need it) the base on the same items, drawn
in the session's seeded order; it looks first at ``limit`` items and, while UNDECIDED, at more (doubling,
up to ``max_items``), each look at its share of ``alpha`` (:mod:`pytest_quant.gate.stats`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.evaluate.backends.transformers import TransformersBackend
from pytest_quant.evaluate.evaluator import EvalRun, ItemResults
from pytest_quant.evaluate.tasks import lm_eval_version, task_digest, task_size
from pytest_quant.gate.baseline import Baseline
from pytest_quant.gate.loop import Outcome, run_looks
from pytest_quant.gate.outcomes import (BosPaired, Extra, GateContext, Paired, accuracy_row, bos_row,
                                        fidelity_row)
from pytest_quant.gate.scores import Threshold, aggregate, bos_loss_scores, bound_scores, combine
from pytest_quant.gate.verdict import GateRow
from pytest_quant.session.markers import AccuracySpec, BosSpec
from pytest_quant.session.session import Case, QuantSession, Target


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


def _context(session: QuantSession, model: str, scheme: str, task: str, metric: str, alpha: float,
             *results: ItemResults | None, build_seconds: float | None = None) -> GateContext:
    """The row's context: notes for results measured on another machine (once each) and for a scheme the session's
    backend could not run here."""
    notes = list(dict.fromkeys(r.elsewhere for r in results if r is not None and r.elsewhere))
    notes += [n for n in (session.why_other(scheme), session.scheme_note(scheme)) if n]
    return GateContext(model, scheme, task, metric, alpha, session.settings.get("undecided"), tuple(notes),
                       build_seconds)


def gate(session: QuantSession, plan: GatePlan, run: EvalRun, metric: str, t: Threshold,
         extra: Callable[[list[int], list[Any]], dict[str, list[float]]] | None = None) -> Outcome[Paired]:
    """Decide ``t`` (and the bounds ``extra`` scores on the quantized values, e.g. a paired baseline) on ``run``
    with the plan's looks."""
    def fetch(ids: list[int]) -> Paired:
        q = session.items(plan.quantized, run, ids)
        b = session.items(plan.base, run, ids) if t.needs_base else None
        return Paired(q, q.values(metric, ids), b, b.values(metric, ids) if b is not None else None)

    def score(ids: list[int], v: Paired) -> dict[str, list[float]]:
        scores = bound_scores(metric, t, v.q, v.b)
        return {**scores, **extra(ids, v.q)} if extra is not None else scores

    return run_looks(plan.order, plan.looks, plan.alpha, fetch, score, task_size(run.task))


def run_accuracy(session: QuantSession, spec: AccuracySpec, plan: GatePlan, case: Case, ck: Checkpoint,
                 baseline: Baseline | None) -> GateRow:
    marker, metric, run = spec.marker, spec.metric, plan.runs[0]
    plan = for_checkpoint(session, plan, case, ck)
    key = "|".join([case.model, case.scheme, spec.task, metric, f"bos={run.add_bos_token}"])
    digest = task_digest(spec.task, lm_eval_version())
    rtol = session.settings.get("baseline_rtol")
    scorer, why = baseline.paired(key, metric, rtol, digest) if baseline is not None else (None, "")
    outcome = gate(session, plan, run, metric, spec.threshold, scorer)
    q = outcome.values.quantized
    settings = {"num_fewshot": run.num_fewshot, "items": outcome.n,
                "item_seed": session.settings.get("item_seed", marker), "add_bos_token": run.add_bos_token,
                "apply_chat_template": run.apply_chat_template, "backend": q.backend,
                **({"weight_only_note": note} if (note := session.scheme_note(case.scheme)) else {}),
                "calibration": session.calibration().__dict__}
    verdicts, messages = [], []
    if baseline is not None:
        value, se = aggregate(metric, outcome.values.q)
        b_verdict, text = baseline.compare(key, metric, value, se, settings, q.versions, rtol, plan.alpha, q.machine,
                                           paired=scorer is not None, why=why)
        messages.append(text)
        verdicts += [b_verdict] if b_verdict else []
    ctx = _context(session, case.model, case.scheme, spec.task, metric, plan.alpha, q, outcome.values.base,
                   build_seconds=ck.manifest.get("seconds"))
    extra = Extra(tuple(verdicts), tuple(messages), key,
                  {"settings": settings, "task_digest": digest, "machine": q.machine,
                   "baseline_comparison": None if baseline is None else "paired" if scorer else "unpaired"})
    return accuracy_row(ctx, spec.threshold, outcome, extra)


def plan_yaml(session: QuantSession, target: Target, run: EvalRun, marker: dict[str, Any]) -> GatePlan:
    """An llm-compressor config's recovery gate: ``target`` against its base model, paired."""
    base = Target(target.model, gpus=target.gpus, engine=target.engine, backend=target.backend)
    return plan_gate(session, run.task, marker, [run], target, base, True)


def yaml_recovery(session: QuantSession, plan: GatePlan, metric: str, t: Threshold) -> GateRow:
    outcome = gate(session, plan, plan.runs[0], metric, t)
    target = plan.quantized
    return accuracy_row(_context(session, target.model, target.scheme or "-", plan.runs[0].task, metric, plan.alpha,
                                 outcome.values.quantized, outcome.values.base), t, outcome)


def run_bos(session: QuantSession, spec: BosSpec, plan: GatePlan, case: Case, ck: Checkpoint) -> GateRow:
    metric, (on, off) = spec.metric, plan.runs
    plan = for_checkpoint(session, plan, case, ck)
    q_target, b_target = plan.quantized, plan.base

    def fetch(ids: list[int]) -> BosPaired:
        q_on, q_off = (session.items(q_target, r, ids) for r in (on, off))
        base = (session.items(b_target, on, ids), session.items(b_target, off, ids)) \
            if spec.max_extra_loss is not None else (None, None)
        b_values = [r.values(metric, ids) if r is not None else None for r in base]
        return BosPaired(q_on, q_off, q_on.values(metric, ids), q_off.values(metric, ids), *base, *b_values)

    def score(ids: list[int], v: BosPaired) -> dict[str, list[float]]:
        scores: dict[str, list[float]] = {}
        if spec.max_delta is not None:
            scores[f"max_delta {spec.max_delta:g}"] = bos_loss_scores(metric, v.q_on, v.q_off, spec.max_delta)
        if spec.max_extra_loss is not None:
            scores[f"max_extra_loss {spec.max_extra_loss:g}"] = bos_loss_scores(metric, v.q_on, v.q_off,
                                                                                spec.max_extra_loss, v.b_on, v.b_off)
        return scores

    outcome = run_looks(plan.order, plan.looks, plan.alpha, fetch, score, task_size(spec.task))
    v = outcome.values
    ctx = _context(session, case.model, case.scheme, spec.task, metric, plan.alpha, v.on, v.off, v.base_on, v.base_off,
                   build_seconds=ck.manifest.get("seconds"))
    return bos_row(ctx, spec.max_delta, spec.max_extra_loss, outcome)


def run_fidelity(session: QuantSession, case: Case) -> GateRow:
    """KL and top-1 agreement per bundled prompt against the base, decided at --quant-alpha (one look)."""
    s = session.settings
    f = session.fidelity(case)
    max_kl, min_top1, alpha = s.get("max_kl"), s.get("min_top1"), s.get("alpha")
    v = combine({f"max_kl {max_kl:g}": [max_kl - x for x in f["per_prompt_kl"]],
                 f"min_top1 {min_top1:g}": [x - min_top1 for x in f["per_prompt_top1"]]}, alpha)
    ctx = GateContext(case.model, case.scheme, "fidelity", "kl", alpha, s.get("undecided"))
    return fidelity_row(ctx, f, max_kl, min_top1, v, TransformersBackend.name)
