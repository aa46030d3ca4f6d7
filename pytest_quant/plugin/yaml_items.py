"""``quant_*.yaml`` files as test items, in the two upstream formats, validated with pydantic.

vLLM's lm-eval CI configs (``.buildkite/lm-eval-harness/configs/*.yaml``) evaluate a model as it is and
compare each metric with a stored value the way ``test_lm_eval_correctness.py`` does: on the task's first
``limit`` items, ``numpy.isclose(value, measured, rtol)``, rtol 0.08 by default.

llm-compressor's lm-eval configs (``tests/lmeval/configs/*.yaml``) quantize the model with ``scheme``, then
compare every metric of ``lmeval.task`` (gsm8k by default) with the base model's: ``recovery_threshold``
(0.95 by default, or per metric) is a gate (here decided with paired statistics, :mod:`.gates`), and
``lmeval.metrics`` only warns when a value is below 95% of the one given, as upstream does.

Unknown keys are errors, as are upstream keys whose meaning pytest-quant cannot honour (named in the
message). One item per task and metric; the items of a file share model loads.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.gate.scores import Threshold, aggregate, isclose
from pytest_quant.session.gate_runs import GatePlan, plan_yaml, yaml_recovery
from pytest_quant.gate.verdict import GateRow
from pytest_quant.plugin.rows import conclude
from pytest_quant.plugin.stash import SESSION
from pytest_quant.gate.stats import FAIL, PASS
from pytest_quant.evaluate.tasks import check_metric, item_order, task_metrics

VLLM_RTOL = 0.08  # vLLM's DEFAULT_RTOL
RECOVERY = 0.95  # llm-compressor's default recovery_threshold


def is_config(path: Path) -> bool:
    return path.name.startswith("quant_") and path.suffix in {".yaml", ".yml"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VllmMetric(Strict):
    name: str
    value: float


class VllmTask(Strict):
    name: str
    metrics: list[VllmMetric] = Field(min_length=1)


class VllmConfig(Strict):
    """vLLM's format; every field its test reads."""
    model_name: str
    tasks: list[VllmTask] = Field(min_length=1)
    limit: int = Field(ge=1)
    num_fewshot: int = Field(ge=0)
    rtol: float = Field(VLLM_RTOL, ge=0, lt=1)
    trust_remote_code: bool = False
    max_model_len: int = Field(4096, ge=1)
    batch_size: int | Literal["auto"] = "auto"
    backend: Literal["vllm", "vllm-vlm"] = "vllm"
    enforce_eager: bool = True
    kv_cache_dtype: str = "auto"
    attention_backend: str | None = None
    env_vars: dict[str, str] | None = None
    apply_chat_template: bool | None = None
    fewshot_as_multiturn: bool = False
    gen_kwargs: str | dict[str, Any] | None = None
    tensor_parallel_size: int = Field(1, ge=1)  # vLLM passes it on the command line; accepted here too

    @field_validator("backend")
    @classmethod
    def _text_only(cls, v: str) -> str:
        if v == "vllm-vlm":
            raise ValueError("the multimodal backend 'vllm-vlm' is not supported by pytest-quant (text models only)")
        return v


class LmEvalConfig(Strict):
    """llm-compressor's ``lmeval`` block (current and earlier field names)."""
    model: Literal["vllm", "hf"] = "vllm"
    model_args: dict[str, Any] | None = None
    add_bos_token: bool = True
    dtype: str = "bfloat16"
    task: str = "gsm8k"
    num_fewshot: int = Field(5, ge=0)
    limit: int = Field(1000, ge=1)
    batch_size: int | Literal["auto"] | None = None
    fewshot_as_multiturn: bool = False
    apply_chat_template: bool = False
    recovery_threshold: float | dict[str, float] = RECOVERY
    metrics: dict[str, float] | None = None
    trust_remote_code: bool = False
    max_model_len: int = Field(2048, ge=1)
    higher_is_better: bool = True

    @field_validator("higher_is_better")
    @classmethod
    def _higher(cls, v: bool) -> bool:
        if not v:
            raise ValueError("llm-compressor supports only higher_is_better: true (its recovery is compressed/base)")
        return v


class LlmCompressorConfig(Strict):
    """llm-compressor's format, plus pytest-quant's recipe knobs and GPU counts (documented extensions)."""
    cadence: str | list[str] | None = None
    test_type: str | None = None
    model: str
    model_class: Literal["AutoModelForCausalLM"] | None = None
    scheme: str | None = None
    recipe: str | None = None
    quant_type: Literal["GPTQ", "gptq"] | None = None
    dataset_id: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    num_calibration_samples: int = Field(512, ge=1)
    max_seq_length: int = Field(2048, ge=1)
    seed: int | None = None
    save_dir: str | None = None
    num_gpus: int = Field(1, ge=1)
    max_memory: Any = None
    ignore: list[str] | None = None
    entrypoint: Literal["oneshot"] = "oneshot"
    lmeval: LmEvalConfig = LmEvalConfig()
    group_size: int | Literal["auto"] | None = None
    actorder: Literal["static", "group", "weight", "none"] | None = None
    dampening_frac: float | None = Field(None, gt=0, lt=1)
    smoothing_strength: float | None = Field(None, gt=0, lt=1)
    build_gpus: int | None = Field(None, ge=1)
    eval_gpus: int | None = Field(None, ge=1)


def _where(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in error["loc"]).replace(".[", "[")
    return loc or "top level"


def _validated(model: type[Strict], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        text = "unknown key (not in the upstream format)" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {len(e.errors()) - 1} more problem{'s' if len(e.errors()) > 2 else ''})" if len(e.errors()) > 1 else ""
        raise QuantUsageError(f"{_where(err)}: {text}{more}") from None


def parse_config(data: Any) -> VllmConfig | LlmCompressorConfig:
    """A validated config; raises QuantUsageError naming the field that is wrong."""
    if not isinstance(data, dict):
        raise QuantUsageError("top level: expected a mapping")
    if "model_name" in data:
        config: Any = _validated(VllmConfig, data)
        for i, task in enumerate(config.tasks):
            for j, m in enumerate(task.metrics):
                _check(lambda: check_metric(task.name, m.name), f"tasks[{i}].metrics[{j}].name")
        return config
    if "model" in data:
        config = _validated(LlmCompressorConfig, data)
        if config.recipe is not None:
            if config.scheme is not None or _knobs(config):
                raise QuantUsageError("recipe: give a recipe file or a scheme with its knobs, not both (the recipe "
                                      "is run as written)")
            return config  # the file is read and checked by llm-compressor when the session starts the item
        if config.scheme is None:
            raise QuantUsageError("scheme: missing (llm-compressor's configs name a scheme or a recipe)")
        from pytest_quant.build.recipes import RecipeSpec

        _check(lambda: RecipeSpec(config.scheme, **_knobs(config)), "scheme")
        _check(lambda: task_metrics(config.lmeval.task), "lmeval.task")
        if isinstance(config.lmeval.recovery_threshold, dict):
            for metric in config.lmeval.recovery_threshold:
                _check(lambda: check_metric(config.lmeval.task, metric), f"lmeval.recovery_threshold.{metric}")
        return config
    raise QuantUsageError("top level: expected 'model_name' (vLLM's format) or 'model' (llm-compressor's format)")


def _check(fn: Any, where: str) -> None:
    try:
        fn()
    except QuantUsageError as e:
        raise QuantUsageError(f"{where}: {e}") from None


def _knobs(c: LlmCompressorConfig) -> dict[str, Any]:
    knobs = {k: getattr(c, k) for k in ("group_size", "actorder", "dampening_frac", "smoothing_strength")
             if getattr(c, k) is not None}
    if c.ignore:
        knobs["ignore"] = tuple(c.ignore)
    return knobs


def _engine(c: VllmConfig | LlmCompressorConfig) -> tuple[tuple[str, Any], ...]:
    """lm-eval model arguments the config sets (hashable)."""
    if isinstance(c, VllmConfig):
        args: dict[str, Any] = {"max_model_len": c.max_model_len, "batch_size": c.batch_size,
                                "enforce_eager": c.enforce_eager, "kv_cache_dtype": c.kv_cache_dtype,
                                "trust_remote_code": c.trust_remote_code}
        if c.attention_backend:
            args["attention_backend"] = c.attention_backend
        if c.env_vars:
            args["env_vars"] = tuple(sorted(c.env_vars.items()))
    else:
        lm = c.lmeval
        args = {"max_model_len": lm.max_model_len, "trust_remote_code": lm.trust_remote_code}
        dtype = (lm.model_args or {}).get("dtype", lm.dtype if "dtype" in lm.model_fields_set else None)
        if dtype is not None:  # unset: the backend's dtype for the device, as for markers (machine.cpu_dtype)
            args["dtype"] = dtype
        if lm.batch_size is not None:
            args["batch_size"] = lm.batch_size
    return tuple(sorted(args.items()))


def _gen_kwargs(v: str | dict[str, Any] | None) -> str | None:
    if isinstance(v, dict):
        return ",".join(f"{k}={val}" for k, val in v.items())
    return v


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
                          engine=_engine(self.spec))
        return Target(self.spec.model_name, gpus=gpus, engine=_engine(self.spec), as_is=True)

    def run(self) -> Any:
        c = self.spec
        apply_chat = c.apply_chat_template if c.apply_chat_template is not None else False
        return self.qs.run(self.task, {"num_fewshot": c.num_fewshot}, True, apply_chat, c.fewshot_as_multiturn,
                                _gen_kwargs(c.gen_kwargs))

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
            return Target(c.model, cases[0].scheme, checkpoint=cases[0].checkpoint, gpus=gpus, engine=_engine(c),
                          backend=qs.eval_backend(cases[0].scheme))
        calibration = {k: getattr(c, f) for k, f in (("num_samples", "num_calibration_samples"),
                                                     ("max_seq_length", "max_seq_length")) if f in c.model_fields_set}
        if c.dataset_id:
            calibration["calibration"] = c.dataset_id + (f":{c.dataset_split}" if c.dataset_split else "")
        knobs = {**_knobs(c), **({"recipe": c.recipe} if c.recipe else {})}
        return Target(c.model, c.scheme, qs.recipe(c.scheme, knobs), qs.calibration(calibration), gpus=gpus,
                      engine=_engine(c), backend=qs.eval_backend(c.scheme))

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

