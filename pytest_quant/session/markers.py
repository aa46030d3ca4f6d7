"""The three markers: their arguments, checked at collection (metric names against the task included).

- ``quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, rtol=, alpha=,
  limit=, max_items=, item_seed=, num_fewshot=, add_bos_token=True, apply_chat_template=False)``
- ``quant_bos(task, metric, max_delta=, max_extra_loss=, alpha=, limit=, max_items=, item_seed=,
  num_fewshot=, apply_chat_template=False)``
- ``quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=)``

``alpha``, ``limit``, ``max_items``, ``item_seed`` and ``num_fewshot`` are options too: a value given on the
command line, in the environment or in the ini file wins over the marker's (docs/REFERENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pytest_quant.evaluate.backends import names as backend_names
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.gate.scores import Threshold
from pytest_quant.session.settings import check
from pytest_quant.evaluate.tasks import check_metric

MARKERS = {
    "quant_accuracy": "quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, "
                      "rtol=, alpha=, limit=, max_items=, item_seed=, num_fewshot=, add_bos_token=True, "
                      "apply_chat_template=False): gate an lm-eval metric of the checkpoint under test",
    "quant_bos": "quant_bos(task, metric, max_delta=, max_extra_loss=, alpha=, limit=, max_items=, item_seed=, "
                 "num_fewshot=, apply_chat_template=False): check BOS tokens in the evaluated prompts and the metric "
                 "with and without BOS",
    "quant_requires": "quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=): "
                      "skip unless the device and backend can run it",
}
THRESHOLD_ARGS = {f.name for f in fields(Threshold)}
OPTION_ARGS = ("alpha", "limit", "max_items", "item_seed", "num_fewshot")  # marker values of session options


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


def _flag(name: str, key: str, v: Any, default: bool) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise QuantUsageError(f"{name}: {key} must be True or False, got {v!r}")
    return v


def _options(name: str, k: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The marker's values of session options, checked by the options' own rules."""
    out = []
    for a in OPTION_ARGS:
        if k.get(a) is None:
            continue
        if isinstance(k[a], bool) or not isinstance(k[a], (int, float)):
            raise QuantUsageError(f"{name}: {a} must be a number, got {k[a]!r}")
        out.append((a, check(a, k[a], name)))
    return tuple(out)


@dataclass(frozen=True)
class AccuracySpec:
    task: str
    metric: str
    threshold: Threshold
    options: tuple[tuple[str, Any], ...] = ()  # alpha, limit, max_items, item_seed, num_fewshot
    add_bos_token: bool = True
    apply_chat_template: bool = False

    @property
    def marker(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class BosSpec:
    task: str
    metric: str
    max_delta: float | None
    max_extra_loss: float | None
    apply_chat_template: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def marker(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class RequiresSpec:
    scheme: str | None = None
    min_capability: int | None = None
    max_capability: int | None = None
    backend: str | None = None
    gpus: int | None = None
    gpu_memory_gib: float | None = None


def parse_accuracy(args: tuple, kwargs: dict[str, Any]) -> AccuracySpec:
    allowed = {"task", "metric", *THRESHOLD_ARGS, *OPTION_ARGS, "add_bos_token", "apply_chat_template"}
    k = _kwargs("quant_accuracy", args, kwargs, allowed, ("task", "metric"))
    threshold = Threshold(**{a: _number("quant_accuracy", a, k[a]) for a in THRESHOLD_ARGS if k.get(a) is not None})
    threshold.validate(k["metric"])
    check_metric(k["task"], k["metric"])
    return AccuracySpec(k["task"], k["metric"], threshold, _options("quant_accuracy", k),
                        _flag("quant_accuracy", "add_bos_token", k.get("add_bos_token"), True),
                        _flag("quant_accuracy", "apply_chat_template", k.get("apply_chat_template"), False))


def parse_bos(args: tuple, kwargs: dict[str, Any]) -> BosSpec:
    allowed = {"task", "metric", "max_delta", "max_extra_loss", "apply_chat_template", *OPTION_ARGS}
    k = _kwargs("quant_bos", args, kwargs, allowed, ("task", "metric"))
    limits = {a: _number("quant_bos", a, k[a]) if k.get(a) is not None else None for a in ("max_delta", "max_extra_loss")}
    for a, v in limits.items():
        if v is not None and v < 0:
            raise QuantUsageError(f"quant_bos: {a} must not be negative, got {v}")
    check_metric(k["task"], k["metric"])
    return BosSpec(k["task"], k["metric"], limits["max_delta"], limits["max_extra_loss"],
                   _flag("quant_bos", "apply_chat_template", k.get("apply_chat_template"), False),
                   _options("quant_bos", k))


def _capability(v: Any) -> int | None:
    if v is None:
        return None
    v = _number("quant_requires", "capability", v)
    if v <= 0:
        raise QuantUsageError(f"quant_requires: a capability must be positive, got {v:g}")
    return int(round(v * 10)) if v < 20 else int(v)  # 8.0 and 80 both mean Ampere


def parse_requires(args: tuple, kwargs: dict[str, Any]) -> RequiresSpec:
    allowed = {f.name for f in fields(RequiresSpec)}
    k = _kwargs("quant_requires", args, kwargs, allowed, ())
    if k.get("backend") is not None and k["backend"] not in backend_names():
        raise QuantUsageError(f"quant_requires: backend must be one of {', '.join(map(repr, backend_names()))}, "
                              f"got {k['backend']!r}")
    from pytest_quant.build.recipes import SCHEMES

    if k.get("scheme") is not None and k["scheme"] not in SCHEMES:
        raise QuantUsageError(f"quant_requires: unknown scheme {k['scheme']!r}; choose one of {', '.join(SCHEMES)}")
    gpus = k.get("gpus")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1):
        raise QuantUsageError(f"quant_requires: gpus must be a positive integer, got {gpus!r}")
    memory = k.get("gpu_memory_gib")
    if memory is not None and _number("quant_requires", "gpu_memory_gib", memory) <= 0:
        raise QuantUsageError(f"quant_requires: gpu_memory_gib must be positive, got {memory!r}")
    return RequiresSpec(k.get("scheme"), _capability(k.get("min_capability")), _capability(k.get("max_capability")),
                        k.get("backend"), gpus, float(memory) if memory is not None else None)


PARSERS = {"quant_accuracy": parse_accuracy, "quant_bos": parse_bos, "quant_requires": parse_requires}


def parse_markers(item: Any) -> dict[str, list[Any]]:
    """Every quant marker on a test item, parsed (a bad argument raises QuantUsageError)."""
    return {name: [fn(m.args, m.kwargs) for m in item.iter_markers(name)] for name, fn in PARSERS.items()}
