"""``quant_*.yaml`` files as test items, in the two formats in use today.

vLLM's lm-eval-harness configs evaluate a model as it is::

    model_name: org/model-W4A16
    tasks: [{name: gsm8k, metrics: [{name: "exact_match,strict-match", value: 0.75}]}]
    limit: 250
    num_fewshot: 5
    rtol: 0.05          # one-sided: measured >= value * (1 - rtol)

llm-compressor's lm-eval configs quantize first, then compare::

    model: org/model
    scheme: W4A16
    dataset_id: HuggingFaceH4/ultrachat_200k
    dataset_split: train_sft
    num_calibration_samples: 512
    lmeval: {task: gsm8k, num_fewshot: 5, limit: 250, metrics: {"exact_match,strict-match": 0.7},
             recovery_threshold: 0.95, rtol: 0.05}

One item per task and metric; a malformed file fails collection naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from .calibration import CalibrationSpec
from .errors import QuantError, QuantUsageError
from .gates import Threshold, check
from .hardware import skip_reason
from .recipes import RecipeSpec

DEFAULT_RTOL = 0.05


def is_config(path: Path) -> bool:
    return path.name.startswith("quant_") and path.suffix in {".yaml", ".yml"}


@dataclass(frozen=True)
class Check:
    model: str
    scheme: str | None  # None: evaluate the model as it is
    task: str
    metric: str
    threshold: Threshold
    run_args: dict[str, Any]
    recipe_args: dict[str, Any]
    calibration_args: dict[str, Any]
    gpus: dict[str, int]


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise QuantUsageError(f"{where}{key}: missing")
    if not isinstance(data[key], kind) or isinstance(data[key], bool) and kind is not bool:
        raise QuantUsageError(f"{where}{key}: expected {getattr(kind, '__name__', kind)}, got {data[key]!r}")
    return data[key]


def _opt_int(data: dict[str, Any], key: str, where: str) -> dict[str, int]:
    if data.get(key) is None:
        return {}
    return {key: _need(data, key, int, where)}


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise QuantUsageError(f"{where}: expected a number, got {v!r}")
    return float(v)


def parse_config(data: Any) -> list[Check]:
    """Checks from a loaded YAML document; raises QuantUsageError naming the field that is wrong."""
    if not isinstance(data, dict):
        raise QuantUsageError("top level: expected a mapping")
    if "model_name" in data:
        return _parse_vllm(data)
    if "model" in data:
        return _parse_llmcompressor(data)
    raise QuantUsageError("top level: expected 'model_name' (vLLM format) or 'model' (llm-compressor format)")


def _parse_vllm(data: dict[str, Any]) -> list[Check]:
    model = _need(data, "model_name", str, "")
    rtol = _number(data.get("rtol", DEFAULT_RTOL), "rtol")
    run_args = {**_opt_int(data, "limit", ""), **_opt_int(data, "num_fewshot", "")}
    gpus = {"eval_gpus": v for v in _opt_int(data, "tensor_parallel_size", "").values()}
    checks = []
    for i, task in enumerate(_need(data, "tasks", list, "")):
        where = f"tasks[{i}]."
        if not isinstance(task, dict):
            raise QuantUsageError(f"tasks[{i}]: expected a mapping")
        name = _need(task, "name", str, where)
        for j, m in enumerate(_need(task, "metrics", list, where)):
            mw = f"{where}metrics[{j}]."
            if not isinstance(m, dict):
                raise QuantUsageError(f"{mw[:-1]}: expected a mapping")
            metric = _need(m, "name", str, mw)
            t = Threshold(expected=_number(_need(m, "value", (int, float), mw), f"{mw}value"), rtol=rtol)
            _validate(t, metric, f"{mw}value")
            checks.append(Check(model, None, name, metric, t, run_args, {}, {}, gpus))
    return checks


def _parse_llmcompressor(data: dict[str, Any]) -> list[Check]:
    model = _need(data, "model", str, "")
    if "recipe" in data and "scheme" not in data:
        raise QuantUsageError("recipe: recipe files are not supported; give 'scheme' with the knobs "
                              "(group_size, actorder, dampening_frac, smoothing_strength, ignore)")
    scheme = _need(data, "scheme", str, "")
    recipe_args = {k: data[k] for k in ("group_size", "actorder", "dampening_frac", "smoothing_strength", "ignore")
                   if data.get(k) is not None}
    try:
        RecipeSpec(scheme, **{k: tuple(v) if k == "ignore" else v for k, v in recipe_args.items()})
    except QuantUsageError as e:
        raise QuantUsageError(f"scheme: {e}") from None
    calibration: dict[str, Any] = {}
    if data.get("dataset_id"):
        split = data.get("dataset_split")
        calibration["calibration"] = _need(data, "dataset_id", str, "") + (f":{split}" if split else "")
    if data.get("num_calibration_samples") is not None:
        calibration["num_samples"] = data["num_calibration_samples"]
        try:
            CalibrationSpec(num_samples=calibration["num_samples"])
        except QuantUsageError as e:
            raise QuantUsageError(f"num_calibration_samples: {e}") from None
    gpus = {**_opt_int(data, "build_gpus", ""), **_opt_int(data, "eval_gpus", "")}
    lm = _need(data, "lmeval", dict, "")
    task = _need(lm, "task", str, "lmeval.")
    rtol = _number(lm.get("rtol", DEFAULT_RTOL), "lmeval.rtol")
    recovery = _number(lm["recovery_threshold"], "lmeval.recovery_threshold") if "recovery_threshold" in lm else None
    run_args = {**_opt_int(lm, "limit", "lmeval."), **_opt_int(lm, "num_fewshot", "lmeval.")}
    metrics = _need(lm, "metrics", dict, "lmeval.")
    if not metrics:
        raise QuantUsageError("lmeval.metrics: empty")
    checks = []
    for metric, value in metrics.items():
        t = Threshold(expected=_number(value, f"lmeval.metrics.{metric}"), rtol=rtol, recovery=recovery)
        _validate(t, metric, f"lmeval.metrics.{metric}")
        checks.append(Check(model, scheme, task, str(metric), t, run_args, recipe_args, calibration, gpus))
    return checks


def _validate(t: Threshold, metric: str, where: str) -> None:
    try:
        t.validate(metric)
    except QuantUsageError as e:
        raise QuantUsageError(f"{where}: {e}") from None


class QuantYamlFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            data = yaml.safe_load(self.path.read_text())
            checks = parse_config(data)
        except yaml.YAMLError as e:
            raise self.CollectError(f"{self.path}: not valid YAML: {e}") from None
        except QuantUsageError as e:
            raise self.CollectError(f"{self.path}: {e}") from None
        for c in checks:
            name = f"{c.model.split('/')[-1]}-{c.scheme or 'as-is'}-{c.task}-{c.metric}"
            yield QuantYamlItem.from_parent(self, name=name, check=c)


class QuantYamlItem(pytest.Item):
    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        from .plugin import SESSION, record
        from .session import Target

        qs = self.config.stash[SESSION]
        c = self.check
        reason = skip_reason(c.scheme, qs.device, qs.backend) if c.scheme else None
        if reason:
            pytest.skip(reason)
        try:
            target = Target(c.model, c.scheme, qs.recipe(c.scheme, c.recipe_args) if c.scheme else None,
                            qs.calibration(c.calibration_args) if c.scheme else None, c.gpus)
            run = qs.run(c.task, c.run_args)
            result = qs.evaluate(target, [run])[run]
            base = qs.evaluate(Target(c.model, gpus=c.gpus), [run])[run] if c.threshold.needs_base else None
            value = result.value(c.metric)
            verdict = check(c.metric, value, c.threshold, result.stderr(c.metric), result.n,
                            base.value(c.metric) if base else None, base.stderr(c.metric) if base else None)
        except QuantError as e:
            raise YamlGateError(f"pytest-quant: {e}") from None
        record(self, [{"model": c.model, "scheme": c.scheme or "as-is", "task": c.task, "metric": c.metric,
                       "quantized": value, "base": verdict.base, "recovery": verdict.recovery, "n": result.n,
                       "threshold": f"expected={c.threshold.expected}, rtol={c.threshold.rtol}"
                                    + (f", recovery={c.threshold.recovery}" if c.threshold.recovery else ""),
                       "passed": verdict.passed, "message": verdict.message, "backend": result.backend,
                       "eval_seconds": result.seconds}])
        if not verdict.passed:
            raise YamlGateError(f"quantization gate failed: {verdict.message}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, YamlGateError):
            return f"{self.path.name}: {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}::{self.name}"


class YamlGateError(Exception):
    """A YAML item's gate failed, or its evaluation could not run."""
