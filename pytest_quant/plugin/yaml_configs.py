"""The two upstream formats of ``quant_*.yaml`` configs, validated with pydantic (the items: :mod:`.yaml_items`).

vLLM's lm-eval CI configs (``.buildkite/lm-eval-harness/configs/*.yaml``) evaluate a model as it is and
compare each metric with a stored value the way ``test_lm_eval_correctness.py`` does: on the task's first
``limit`` items, ``numpy.isclose(value, measured, rtol)``, rtol 0.08 by default.

llm-compressor's lm-eval configs (``tests/lmeval/configs/*.yaml``) quantize the model with ``scheme``, then
compare every metric of ``lmeval.task`` (gsm8k by default) with the base model's: ``recovery_threshold``
(0.95 by default, or per metric) is a gate, and ``lmeval.metrics`` only warns when a value is below 95% of the one
given, as upstream does.

Unknown keys are errors, as are upstream keys whose meaning pytest-quant cannot honour (named in the message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_quant.evaluate.tasks import check_metric, task_metrics
from pytest_quant.infra.errors import QuantUsageError

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
            if config.scheme is not None or recipe_knobs(config):
                raise QuantUsageError("recipe: give a recipe file or a scheme with its knobs, not both (the recipe "
                                      "is run as written)")
            return config  # the file is read and checked by llm-compressor when the session starts the item
        if config.scheme is None:
            raise QuantUsageError("scheme: missing (llm-compressor's configs name a scheme or a recipe)")
        from pytest_quant.build.recipes import RecipeSpec

        _check(lambda: RecipeSpec(config.scheme, **recipe_knobs(config)), "scheme")
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


def recipe_knobs(c: LlmCompressorConfig) -> dict[str, Any]:
    """The recipe knobs a config sets (RecipeSpec's keyword arguments)."""
    knobs = {k: getattr(c, k) for k in ("group_size", "actorder", "dampening_frac", "smoothing_strength")
             if getattr(c, k) is not None}
    if c.ignore:
        knobs["ignore"] = tuple(c.ignore)
    return knobs


def engine_args(c: VllmConfig | LlmCompressorConfig) -> tuple[tuple[str, Any], ...]:
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


def gen_kwargs(v: str | dict[str, Any] | None) -> str | None:
    if isinstance(v, dict):
        return ",".join(f"{k}={val}" for k, val in v.items())
    return v
