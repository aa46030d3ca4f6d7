"""The three markers: their arguments (checked at collection) and the gates they run.

- ``quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, rtol=,
  stderr_k=, wilson=, num_fewshot=, limit=, add_bos_token=, apply_chat_template=)``
- ``quant_bos(task, metric, max_delta=, max_extra_loss=, apply_chat_template=, num_fewshot=, limit=)``
- ``quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=)``
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .baseline import Baseline
from .build import Checkpoint
from .errors import QuantUsageError
from .gates import Threshold, check
from .session import QuantSession, Target
from .tasks import higher_is_better

MARKERS = {
    "quant_accuracy": "quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, "
                      "rtol=, stderr_k=, wilson=, num_fewshot=, limit=, add_bos_token=True, "
                      "apply_chat_template=False): gate an lm-eval metric of the checkpoint under test",
    "quant_bos": "quant_bos(task, metric, max_delta=, max_extra_loss=, apply_chat_template=False, num_fewshot=, "
                 "limit=): check BOS tokens in the evaluated prompts and the metric with and without BOS",
    "quant_requires": "quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=): "
                      "skip unless the device and backend can run it",
}
THRESHOLD_ARGS = {f.name for f in fields(Threshold)}


def _kwargs(name: str, args: tuple, kwargs: dict[str, Any], allowed: set[str], positional: tuple[str, ...]
            ) -> dict[str, Any]:
    if len(args) > len(positional):
        raise QuantUsageError(f"{name} takes at most {len(positional)} positional arguments ({', '.join(positional)})")
    merged = dict(zip(positional, args))
    dup = set(merged) & set(kwargs)
    if dup:
        raise QuantUsageError(f"{name}: {', '.join(sorted(dup))} given twice")
    merged.update(kwargs)
    unknown = set(merged) - allowed
    if unknown:
        raise QuantUsageError(f"{name} got unknown argument(s) {', '.join(sorted(unknown))}; "
                              f"it takes {', '.join(sorted(allowed))}")
    for req in positional:
        if not isinstance(merged.get(req), str) or not merged[req]:
            raise QuantUsageError(f"{name} needs {req}=... (a string)")
    return merged


def _number(name: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise QuantUsageError(f"{name}: {key} must be a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class AccuracySpec:
    task: str
    metric: str
    threshold: Threshold
    run_args: dict[str, Any]
    add_bos_token: bool = True
    apply_chat_template: bool = False


@dataclass(frozen=True)
class BosSpec:
    task: str
    metric: str
    max_delta: float | None
    max_extra_loss: float | None
    apply_chat_template: bool
    run_args: dict[str, Any]


@dataclass(frozen=True)
class RequiresSpec:
    scheme: str | None = None
    min_capability: int | None = None
    max_capability: int | None = None
    backend: str | None = None
    gpus: int | None = None
    gpu_memory_gib: float | None = None


def parse_accuracy(args: tuple, kwargs: dict[str, Any]) -> AccuracySpec:
    allowed = {"task", "metric", *THRESHOLD_ARGS, "num_fewshot", "limit", "add_bos_token", "apply_chat_template"}
    k = _kwargs("quant_accuracy", args, kwargs, allowed, ("task", "metric"))
    threshold = Threshold(**{a: _number("quant_accuracy", a, k[a]) for a in THRESHOLD_ARGS if k.get(a) is not None})
    threshold.validate(k["metric"])
    return AccuracySpec(k["task"], k["metric"], threshold, _run_args("quant_accuracy", k),
                        bool(k.get("add_bos_token", True)), bool(k.get("apply_chat_template", False)))


def _run_args(name: str, k: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for a in ("num_fewshot", "limit"):
        if k.get(a) is not None:
            if isinstance(k[a], bool) or not isinstance(k[a], int) or k[a] < (0 if a == "num_fewshot" else 1):
                raise QuantUsageError(f"{name}: {a} must be a {'non-negative' if a == 'num_fewshot' else 'positive'} "
                                      f"integer, got {k[a]!r}")
            out[a] = k[a]
    return out


def parse_bos(args: tuple, kwargs: dict[str, Any]) -> BosSpec:
    allowed = {"task", "metric", "max_delta", "max_extra_loss", "apply_chat_template", "num_fewshot", "limit"}
    k = _kwargs("quant_bos", args, kwargs, allowed, ("task", "metric"))
    limits = {a: _number("quant_bos", a, k[a]) if k.get(a) is not None else None for a in ("max_delta", "max_extra_loss")}
    for a, v in limits.items():
        if v is not None and v < 0:
            raise QuantUsageError(f"quant_bos: {a} must not be negative, got {v}")
    return BosSpec(k["task"], k["metric"], limits["max_delta"], limits["max_extra_loss"],
                   bool(k.get("apply_chat_template", False)), _run_args("quant_bos", k))


def _capability(v: Any) -> int | None:
    if v is None:
        return None
    v = _number("quant_requires", "capability", v)
    return int(round(v * 10)) if v < 20 else int(v)  # 8.0 and 80 both mean Ampere


def parse_requires(args: tuple, kwargs: dict[str, Any]) -> RequiresSpec:
    allowed = {f.name for f in fields(RequiresSpec)}
    k = _kwargs("quant_requires", args, kwargs, allowed, ())
    if k.get("backend") not in (None, "vllm", "hf"):
        raise QuantUsageError(f"quant_requires: backend must be 'vllm' or 'hf', got {k['backend']!r}")
    from .recipes import SCHEMES

    if k.get("scheme") is not None and k["scheme"] not in SCHEMES:
        raise QuantUsageError(f"quant_requires: unknown scheme {k['scheme']!r}; choose one of {', '.join(SCHEMES)}")
    return RequiresSpec(k.get("scheme"), _capability(k.get("min_capability")), _capability(k.get("max_capability")),
                        k.get("backend"), int(k["gpus"]) if k.get("gpus") else None,
                        _number("quant_requires", "gpu_memory_gib", k["gpu_memory_gib"])
                        if k.get("gpu_memory_gib") is not None else None)


# -- planning and running --------------------------------------------------------------------


def accuracy_plan(session: QuantSession, spec: AccuracySpec, model: str, scheme: str) -> None:
    run = session.run(spec.task, spec.run_args, spec.add_bos_token, spec.apply_chat_template)
    session.plan(Target(model, scheme), [run])
    if spec.threshold.needs_base:
        session.plan(Target(model), [run])


def bos_runs(session: QuantSession, spec: BosSpec) -> tuple[Any, Any]:
    return (session.run(spec.task, spec.run_args, True, spec.apply_chat_template),
            session.run(spec.task, spec.run_args, False, spec.apply_chat_template))


def bos_plan(session: QuantSession, spec: BosSpec, model: str, scheme: str) -> None:
    runs = list(bos_runs(session, spec))
    session.plan(Target(model, scheme), runs)
    if spec.max_extra_loss is not None:
        session.plan(Target(model), runs)


def _row(ck: Checkpoint, session: QuantSession, model: str, scheme: str, task: str, metric: str,
         **extra: Any) -> dict[str, Any]:
    return {"model": model, "scheme": scheme, "task": task, "metric": metric, "backend": session.backend,
            "build_seconds": ck.manifest.get("seconds"), "checkpoint": ck.key, **extra}


def run_accuracy(session: QuantSession, spec: AccuracySpec, ck: Checkpoint, model: str, scheme: str,
                 baseline: Baseline | None) -> dict[str, Any]:
    run = session.run(spec.task, spec.run_args, spec.add_bos_token, spec.apply_chat_template)
    q = session.evaluate(Target(model, scheme), [run], ck)[run]
    base = session.evaluate(Target(model), [run])[run] if spec.threshold.needs_base else None
    verdict = check(spec.metric, q.value(spec.metric), spec.threshold, q.stderr(spec.metric), q.n,
                    base.value(spec.metric) if base else None, base.stderr(spec.metric) if base else None)
    messages, passed = [verdict.message], verdict.passed
    settings = {"num_fewshot": run.num_fewshot, "limit": run.limit, "add_bos_token": run.add_bos_token,
                "apply_chat_template": run.apply_chat_template, "backend": session.backend,
                "calibration": session.calibration().__dict__}
    key = "|".join([model, scheme, spec.task, spec.metric, f"bos={run.add_bos_token}"])
    if baseline is not None:
        b = baseline.compare(key, spec.metric, q.value(spec.metric), settings, session.settings.get("baseline_rtol"))
        if b is not None:
            messages.append(b.message)
            passed = passed and b.passed
    return _row(ck, session, model, scheme, spec.task, spec.metric, key=key, quantized=q.value(spec.metric),
                stderr=q.stderr(spec.metric), n=q.n, base=base.value(spec.metric) if base else None,
                recovery=verdict.recovery, threshold=_describe(spec.threshold), passed=passed,
                message="; ".join(messages), eval_seconds=q.seconds, settings=settings, versions=q.versions)


def _describe(t: Threshold) -> str:
    return ", ".join(f"{f.name}={getattr(t, f.name):g}" for f in fields(t) if getattr(t, f.name) is not None)


def run_bos(session: QuantSession, spec: BosSpec, ck: Checkpoint, model: str, scheme: str) -> dict[str, Any]:
    on, off = bos_runs(session, spec)
    q = session.evaluate(Target(model, scheme), [on, off], ck)
    failures = []
    counts_on, counts_off = q[on].bos_prefix_counts, q[off].bos_prefix_counts
    not_one = {k: v for k, v in counts_on.items() if k not in ("1", "inserted") and v}
    if not_one:
        failures.append(f"with add_bos_token=True, prompts must start with exactly one BOS; leading-BOS counts "
                        f"{not_one} (of {sum(v for k, v in counts_on.items() if k != 'inserted')} prompts)")
    doubled = {k: v for k, v in counts_off.items() if k in ("2", "3") and v}
    if doubled:
        failures.append(f"with add_bos_token=False, prompts start with two or more BOS: {doubled}")
    sign = 1 if higher_is_better(spec.metric) else -1
    with_bos, without = q[on].value(spec.metric), q[off].value(spec.metric)
    loss = sign * (with_bos - without)  # how much worse the metric is without BOS
    text = f"{spec.metric} with BOS {with_bos:.4f}, without {without:.4f}, loss without BOS {loss:+.4f}"
    if spec.max_delta is not None and loss > spec.max_delta:
        failures.append(f"loss without BOS {loss:.4f} > max_delta {spec.max_delta}")
    base_loss = None
    if spec.max_extra_loss is not None:
        b = session.evaluate(Target(model), [on, off])
        base_loss = sign * (b[on].value(spec.metric) - b[off].value(spec.metric))
        text += f"; base loses {base_loss:+.4f}"
        if loss - base_loss > spec.max_extra_loss:
            failures.append(f"the quantized model loses {loss - base_loss:.4f} more than the base without BOS "
                            f"(max_extra_loss {spec.max_extra_loss})")
    inserted = counts_on.get("inserted", 0)
    if inserted:
        text += f"; the tokenizer added no BOS itself, pytest-quant prepended it to {inserted} prompts"
    message = text + ("; FAILED " + "; ".join(failures) if failures else "; passed")
    return _row(ck, session, model, scheme, spec.task, spec.metric, key="|".join([model, scheme, spec.task, spec.metric,
                                                                               "bos-sensitivity"]),
                quantized=with_bos, quantized_without_bos=without, bos_loss=loss, base_bos_loss=base_loss,
                bos_prefix_counts={"with": counts_on, "without": counts_off}, n=q[on].n,
                threshold=f"max_delta={spec.max_delta}, max_extra_loss={spec.max_extra_loss}",
                passed=not failures, message=message, eval_seconds=q[on].seconds + q[off].seconds)
