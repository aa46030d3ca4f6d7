"""``quant_*.yaml`` files as test items (the formats: :mod:`.yaml_configs`): one item per task and metric, the items
of a file sharing model loads. vLLM's format compares each metric with its stored value at rtol; llm-compressor's
gates every metric of its task against the base model with paired statistics (:mod:`pytest_quant.gate`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pytest_quant.evaluate.tasks import item_order, task_metrics
from pytest_quant.gate.scores import Threshold, aggregate, isclose
from pytest_quant.gate.stats import FAIL, PASS
from pytest_quant.gate.verdict import GateRow
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.plugin.rows import conclude
from pytest_quant.plugin.stash import SESSION
from pytest_quant.plugin.yaml_configs import (RECOVERY, LlmCompressorConfig, VllmConfig, engine_args, gen_kwargs,
                                              parse_config, recipe_knobs)
from pytest_quant.session.gate_runs import GatePlan, plan_yaml, yaml_recovery


class QuantYamlFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            config = parse_config(yaml.safe_load(self.path.read_text()))
        except yaml.YAMLError as e:
            raise self.CollectError(f"{self.path}: not valid YAML: {e}") from None
        except QuantUsageError as e:
            raise self.CollectError(f"{self.path}: {e}") from None
        try:
            yield from self._items(config)
        except QuantUsageError as e:
            raise self.CollectError(f"{self.path}: {e}") from None

    def _items(self, config: VllmConfig | LlmCompressorConfig) -> Iterator[pytest.Item]:
        if isinstance(config, LlmCompressorConfig) and config.recipe is not None:  # as upstream: next to the config
            recipe = (self.path.parent / config.recipe).resolve()
            config = config.model_copy(update={"recipe": str(recipe), "scheme": f"recipe:{recipe.stem}"})
        if isinstance(config, VllmConfig):
            for task in config.tasks:
                for m in task.metrics:
                    yield VllmItem.from_parent(self, name=f"{Path(config.model_name).name}-as-is-{task.name}-{m.name}",
                                               spec=config, task=task.name, metric=m.name, expected=m.value)
        else:
            lm = config.lmeval
            thresholds = lm.recovery_threshold
            for metric in sorted(task_metrics(lm.task)):
                recovery = thresholds.get(metric, RECOVERY) if isinstance(thresholds, dict) else thresholds
                yield LlmCompressorItem.from_parent(
                    self, name=f"{Path(config.model).name}-{config.scheme}-{lm.task}-{metric}", spec=config,
                    task=lm.task, metric=metric, threshold=Threshold(recovery=recovery))


class QuantYamlItem(pytest.Item):
    """One metric of one task of a YAML config."""

    quant_check = True

    def __init__(self, *, spec: Any, task: str, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec, self.task, self.metric = spec, task, metric

    @property
    def qs(self) -> Any:
        """The pytest-quant session (``session`` is pytest's)."""
        return self.config.stash[SESSION]

    def skip_if_unsupported(self, scheme: str | None, gpus: int, backend: str | None) -> None:
        """Skip what this device cannot run; ``backend``: the one the config names (None: silent, the session's
        choice serves, as --quant-backend auto picks per scheme)."""
        reason = self.qs.why_skip(scheme, (), gpus, backend)
        if reason:
            pytest.skip(reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, YamlGateError):
            return f"{self.path.name}: {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}::{self.name}"

    def evaluate(self, fn: Any) -> Any:
        try:
            return fn()
        except QuantError as e:
            raise YamlGateError(f"pytest-quant: {e}") from None


class VllmItem(QuantYamlItem):
    def __init__(self, *, expected: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expected = expected
        self.quant_model, self.quant_scheme = self.spec.model_name, "as-is"

    def target(self) -> Any:
        from pytest_quant.session.session import Target

        gpus = (("eval_gpus", self.spec.tensor_parallel_size),)
        cases = self.qs.cases() if self.qs.settings.get("checkpoint") else []
        if cases:  # --quant-checkpoint: evaluate that checkpoint instead of model_name
            return Target(cases[0].model, cases[0].scheme, checkpoint=cases[0].checkpoint, gpus=gpus,
                          engine=engine_args(self.spec))
        return Target(self.spec.model_name, gpus=gpus, engine=engine_args(self.spec), as_is=True)

    def run(self) -> Any:
        c = self.spec
        apply_chat = c.apply_chat_template if c.apply_chat_template is not None else False
        return self.qs.run(self.task, {"num_fewshot": c.num_fewshot}, True, apply_chat, c.fewshot_as_multiturn,
                                gen_kwargs(c.gen_kwargs))

    def ids(self) -> list[int]:
        return item_order(self.task, None)[:self.qs.settings.get("limit", {"limit": self.spec.limit})]

    def plan(self, qs: Any) -> None:
        qs.plan(self.target(), self.run(), self.ids())

    def runtest(self) -> None:
        self.skip_if_unsupported(None, self.spec.tensor_parallel_size, self.spec.backend)
        qs, ids = self.qs, self.ids()
        result = self.evaluate(lambda: qs.items(self.target(), self.run(), ids))
        measured = aggregate(self.metric, self.evaluate(lambda: result.values(self.metric, ids)))[0]
        rtol = self.spec.rtol
        ok = isclose(measured, self.expected, rtol)
        message = (f"{self.metric} = {measured:.4f} on the first {len(ids)} items; expected {self.expected:.4f}, "
                   f"rtol {rtol:g} (vLLM's check: |measured - expected| <= rtol * |measured|): "
                   f"{PASS if ok else FAIL}")
        row = GateRow(model=self.spec.model_name, scheme="as-is", task=self.task, metric=self.metric,
                      verdict=PASS if ok else FAIL, passed=ok, message=message,
                      threshold=f"expected={self.expected:g}, rtol={rtol:g}", quantized=measured, n=len(ids), looks=1,
                      backend=result.backend, eval_seconds=result.seconds)
        conclude(self, [row], qs.settings.get("undecided"))


class LlmCompressorItem(QuantYamlItem):
    def __init__(self, *, threshold: Threshold, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.quant_model, self.quant_scheme = self.spec.model, self.spec.scheme
        self._plan: GatePlan | None = None

    @property
    def marker(self) -> dict[str, Any]:
        """The config's evaluation fields, where it sets them; where it is silent the session's profile decides,
        as for markers (llm-compressor's defaults, 1000 items 5-shot, would ignore --quant-profile ci)."""
        lm = self.spec.lmeval
        out: dict[str, Any] = {}
        if "limit" in lm.model_fields_set:
            out.update(limit=lm.limit, max_items=lm.limit)
        if "num_fewshot" in lm.model_fields_set:
            out["num_fewshot"] = lm.num_fewshot
        return out

    def case_target(self) -> Any:
        from pytest_quant.session.session import Target

        c, qs = self.spec, self.qs
        gpus = (("build_gpus", c.build_gpus or c.num_gpus), ("eval_gpus", c.eval_gpus or c.num_gpus))
        cases = qs.cases() if qs.settings.get("checkpoint") else []
        if cases:  # --quant-checkpoint: gate that checkpoint instead of building one
            return Target(c.model, cases[0].scheme, checkpoint=cases[0].checkpoint, gpus=gpus, engine=engine_args(c),
                          backend=qs.eval_backend(cases[0].scheme))
        calibration = {k: getattr(c, f) for k, f in (("num_samples", "num_calibration_samples"),
                                                     ("max_seq_length", "max_seq_length")) if f in c.model_fields_set}
        if c.dataset_id:
            calibration["calibration"] = c.dataset_id + (f":{c.dataset_split}" if c.dataset_split else "")
        knobs = {**recipe_knobs(c), **({"recipe": c.recipe} if c.recipe else {})}
        return Target(c.model, c.scheme, qs.recipe(c.scheme, knobs), qs.calibration(calibration), gpus=gpus,
                      engine=engine_args(c), backend=qs.eval_backend(c.scheme))

    def run(self) -> Any:
        lm = self.spec.lmeval
        bos = (lm.model_args or {}).get("add_bos_token", lm.add_bos_token)
        return self.qs.run(self.task, self.marker, bool(bos), lm.apply_chat_template, lm.fewshot_as_multiturn)

    def plan(self, qs: Any) -> GatePlan:
        """The gate's plan, made once (at collection finish)."""
        if self._plan is None:
            self._plan = plan_yaml(qs, self.case_target(), self.run(), self.marker)
        return self._plan

    def _cadence(self) -> None:
        cadence, wanted = self.spec.cadence, os.environ.get("CADENCE")
        if cadence is None or wanted is None:
            return
        if wanted not in (cadence if isinstance(cadence, list) else [cadence]):
            pytest.skip(f"cadence {cadence!r} does not include CADENCE={wanted!r} (llm-compressor's rule)")

    def runtest(self) -> None:
        c = self.spec
        self._cadence()
        target = self.case_target()
        if target.scheme != c.scheme:
            pytest.skip(f"the checkpoint given ({target.scheme}) is not this config's scheme {c.scheme}")
        self.skip_if_unsupported(c.scheme, max(dict(target.gpus).values()),
                                 c.lmeval.model if "model" in c.lmeval.model_fields_set else None)
        row = self.evaluate(lambda: yaml_recovery(self.qs, self.plan(self.qs), self.metric, self.threshold))
        expected = (c.lmeval.metrics or {}).get(self.metric)
        if expected is not None and row.quantized is not None and row.quantized < expected * 0.95:
            note = (f"{self.metric} {row.quantized:.4f} is below the expected {expected:.4f} (-5%): a warning, "
                    "not a failure, as in llm-compressor")
            warnings.warn(f"{self.path.name}: {note}", stacklevel=1)
            row.message += f"; {note}"
        conclude(self, [row], self.qs.settings.get("undecided"))


class YamlGateError(Exception):
    """A YAML item's gate failed, or its evaluation could not run."""

