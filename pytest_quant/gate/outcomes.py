"""From a decided gate (:class:`.loop.Outcome`) to its row: every message and report field of the accuracy, BOS and
fidelity gates is written here, from typed values, with no pytest and no session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pytest_quant.evaluate.evaluator import ItemResults
from pytest_quant.evaluate.tasks import Value, higher_is_better
from pytest_quant.gate.loop import Outcome
from pytest_quant.gate.scores import Threshold, Verdict, aggregate, is_ratio
from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, overall
from pytest_quant.gate.verdict import GateDetails, GateItems, GateRow, verdict_outcome


@dataclass(frozen=True)
class Paired:
    """What one look of an accuracy gate fetched: the quantized model's results and values on the look's items and,
    where a bound compares with it, the base model's on the same items."""
    quantized: ItemResults
    q: list[Value]
    base: ItemResults | None = None
    b: list[Value] | None = None


@dataclass(frozen=True)
class BosPaired:
    """What one look of a BOS gate fetched: the quantized model with and without BOS (and the base, where the
    gate compares with it), on the same items."""
    on: ItemResults
    off: ItemResults
    q_on: list[Value]
    q_off: list[Value]
    base_on: ItemResults | None = None
    base_off: ItemResults | None = None
    b_on: list[Value] | None = None
    b_off: list[Value] | None = None


@dataclass(frozen=True)
class GateContext:
    """What a row needs beyond the outcome: what was gated, the level, what UNDECIDED does to the test, and notes
    the session adds (results measured elsewhere, a scheme evaluated by another backend than the session's)."""
    model: str
    scheme: str
    task: str
    metric: str
    alpha: float
    undecided: str
    notes: tuple[str, ...] = ()
    build_seconds: float | None = None


@dataclass(frozen=True)
class Extra:
    """Bounds and sentences added to an accuracy gate by others (a paired baseline), and report fields."""
    verdicts: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # GateDetails fields


def summary(verdict: Verdict, n: int, looks: int) -> str:
    head = {PASS: "PASS", FAIL: "FAIL", UNDECIDED: "UNDECIDED (the items cannot decide)"}[verdict.verdict]
    return f"{head} on {n} items after {looks} look{'s' if looks > 1 else ''}: {verdict.describe()}"


def decided(ctx: GateContext, verdict: str, decisions: Verdict, details: GateDetails, **fields: Any) -> GateRow:
    """The row of a gate that reached a verdict: what its test does (UNDECIDED as --quant-undecided says) and each
    bound's decision in the report."""
    details.bounds = dict(decisions.decisions)
    return GateRow(model=ctx.model, scheme=ctx.scheme, task=ctx.task, metric=ctx.metric, verdict=verdict,
                   passed=verdict_outcome(verdict, ctx.undecided), extra=details, build_seconds=ctx.build_seconds,
                   **fields)


def answers(ids: Sequence[int], **results: ItemResults | None) -> dict[str, list[Any]]:
    """Each model's answer on ``ids`` (None where not kept), by the names the row's items use."""
    return {name: [r.answers.get(i) for i in ids] for name, r in results.items() if r is not None and r.answers}


def _recovery(metric: str, q: float, b: float) -> float | None:
    if q <= 0 or b <= 0:
        return None
    return q / b if higher_is_better(metric) else b / q


def accuracy_row(ctx: GateContext, t: Threshold, outcome: Outcome[Paired], extra: Extra = Extra()) -> GateRow:
    """An accuracy gate's (or a YAML config's recovery gate's) row."""
    v, metric, ids = outcome.values, ctx.metric, list(outcome.ids)
    q, se = aggregate(metric, v.q)
    base = aggregate(metric, v.b)[0] if v.b is not None else None
    recovery = _recovery(metric, q, base) if base is not None else None
    head = f"{metric} = {q:.4f} ± {se:.4f} (n={outcome.n})" + (f", base {base:.4f}, recovery {recovery:.3f}"
                                                                if base is not None and recovery is not None else "")
    details = GateDetails(stderr=se, versions=v.quantized.versions, items_to_decide=outcome.needed,
                          numerics=v.quantized.numerics, engine=v.quantized.engine or None,
                          items=GateItems(ids=ids, quantized=v.q, base=v.b,
                                          answers=answers(ids, quantized=v.quantized, base=v.base)),
                          **extra.details)
    scales = (v.quantized.engine or {}).get("kv_cache_scales")
    message = "; ".join([f"{head}; {summary(outcome.verdict, outcome.n, outcome.looks)}{outcome.hint}",
                         *extra.messages, *ctx.notes, *([f"FP8 KV cache with {scales}"] if scales else [])])
    return decided(ctx, overall([outcome.verdict.verdict, *extra.verdicts]), outcome.verdict, details,
                   message=message, threshold=t.describe() + f", alpha={ctx.alpha:g}", quantized=q, base=base,
                   recovery=recovery, n=outcome.n, looks=outcome.looks, backend=v.quantized.backend,
                   eval_seconds=v.quantized.seconds, key=extra.key)


def bos_structure(counts_on: dict[str, int], counts_off: dict[str, int]) -> list[str]:
    """What is wrong with the leading BOS tokens of the prompts evaluated with and without BOS."""
    failures = []
    not_one = {k: v for k, v in counts_on.items() if k not in ("1", "inserted") and v}
    if not_one:
        failures.append(f"with add_bos_token=True, prompts must start with exactly one BOS; leading-BOS counts "
                        f"{not_one} (of {sum(v for k, v in counts_on.items() if k != 'inserted')} prompts)")
    doubled = {k: v for k, v in counts_off.items() if k in ("2", "3") and v}
    if doubled:
        failures.append(f"with add_bos_token=False, prompts start with two or more BOS: {doubled}")
    return failures


def bos_row(ctx: GateContext, max_delta: float | None, max_extra_loss: float | None,
            outcome: Outcome[BosPaired]) -> GateRow:
    """A BOS-sensitivity gate's row: the structure of the prompts' BOS tokens, then the loss without BOS."""
    v, metric, ids = outcome.values, ctx.metric, list(outcome.ids)
    structure = bos_structure(v.on.bos_prefix_counts, v.off.bos_prefix_counts)
    with_bos, without = aggregate(metric, v.q_on)[0], aggregate(metric, v.q_off)[0]
    sign = 1 if higher_is_better(metric) else -1
    loss = sign * (with_bos - without)
    text = f"{metric} with BOS {with_bos:.4f}, without {without:.4f}, loss without BOS {loss:+.4f}"
    if v.b_on is not None and v.b_off is not None:
        text += f"; base loses {sign * (aggregate(metric, v.b_on)[0] - aggregate(metric, v.b_off)[0]):+.4f}"
    inserted = v.on.bos_prefix_counts.get("inserted", 0)
    if inserted:
        text += (f"; the tokenizer added no BOS itself: pytest-quant prepended one ({inserted} prompts in the "
                 "evaluations these items were read from)")
    verdict = FAIL if structure else outcome.verdict.verdict
    message = f"{text}; " + ("FAIL: " + "; ".join(structure) if structure
                             else summary(outcome.verdict, outcome.n, outcome.looks) + outcome.hint)
    if is_ratio(metric):
        message += " (losses of perplexity metrics in nats per word/byte)"
    details = GateDetails(quantized_without_bos=without, bos_loss=loss, items_to_decide=outcome.needed,
                          numerics=v.on.numerics,
                          items=GateItems(ids=ids, quantized_with_bos=v.q_on, quantized_without_bos=v.q_off,
                                          base_with_bos=v.b_on, base_without_bos=v.b_off,
                                          answers=answers(ids, quantized_with_bos=v.on, quantized_without_bos=v.off)),
                          bos_prefix_counts={"with": v.on.bos_prefix_counts, "without": v.off.bos_prefix_counts})
    return decided(ctx, verdict, outcome.verdict, details, message="; ".join([message, *ctx.notes]),
                   threshold=f"max_delta={max_delta}, max_extra_loss={max_extra_loss}, alpha={ctx.alpha:g}",
                   quantized=with_bos, n=outcome.n, looks=outcome.looks, backend=v.on.backend,
                   key="|".join([ctx.model, ctx.scheme, ctx.task, metric, "bos-sensitivity"]),
                   eval_seconds=v.on.seconds + v.off.seconds)


def fidelity_row(ctx: GateContext, f: dict[str, Any], max_kl: float, min_top1: float, verdict: Verdict,
                 backend: str) -> GateRow:
    """A fidelity gate's row: KL and top-1 agreement per prompt against the base, one look."""
    message = (f"KL {f['kl']:.4f} (max {max_kl:g}), top-1 agreement {f['top1_agreement']:.4f} (min {min_top1:g}) "
               f"over {f['prompts']} prompts, {f['tokens']} tokens; {summary(verdict, f['prompts'], 1)}")
    return decided(ctx, verdict.verdict, verdict, GateDetails(top1_agreement=f["top1_agreement"], tokens=f["tokens"]),
                   message=message, threshold=f"max_kl={max_kl:g}, min_top1={min_top1:g}, alpha={ctx.alpha:g}",
                   quantized=f["kl"], n=f["prompts"], looks=1, backend=backend)
