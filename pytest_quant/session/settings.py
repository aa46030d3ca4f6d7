"""Every pytest-quant option, its type, and the one order values are resolved in.

Order (as pytest-timeout): command line, then environment variable, then ini, then the test's marker
arguments (or a YAML config's fields), then the profile's value, then the built-in default. Types are pydantic
annotations; the environment is read by pydantic-settings (``QUANT_`` prefix), the command line and ini come from
pytest. Each source's values are checked when the session starts: a bad one is a usage error (exit 4) in one
line naming the option, where the value came from and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError,
                      create_model)

from pytest_quant.evaluate.backends import names as backend_names
from pytest_quant.infra.errors import QuantUsageError


def _list(v: Any) -> list[str]:
    """Repeated and comma- or newline-separated values, flattened."""
    if isinstance(v, (list, tuple)):
        return [p for x in v for p in _list(x)]
    return [p.strip() for p in str(v).replace("\n", ",").split(",") if p.strip()]


def _group_size(v: Any) -> int | str:
    if str(v).strip() == "auto":
        return "auto"
    try:
        n = int(str(v).strip())
    except ValueError:
        n = 0
    if isinstance(v, bool) or n == 0 or n < -1:
        raise ValueError("expected a positive integer, -1 (per channel) or 'auto'")
    return n


Names = Annotated[list[str], BeforeValidator(_list)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


def between(lo: float, hi: float, lo_open: bool = True, hi_open: bool = True) -> Any:
    """A number inside an interval, open or closed at each end."""
    return Annotated[float, Field(**{"gt" if lo_open else "ge": lo, "lt" if hi_open else "le": hi})]


@dataclass(frozen=True)
class Option:
    name: str  # attribute name, also the ini name with a "quant_" prefix
    help: str
    type: Any = Text
    default: Any = None
    flag: bool = False  # a store_true command-line flag
    repeat: bool = False  # command line may repeat it (append)

    @property
    def cli(self) -> str:
        return "--quant-" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "QUANT_" + self.name.upper()

    @property
    def ini(self) -> str:
        return "quant_" + self.name


# Profiles: the guides' settings, and a fast one for CI on a 2-core CPU.
PROFILES: dict[str, dict[str, Any]] = {
    "guide": {"num_samples": 512, "max_seq_length": 2048, "num_fewshot": 5, "limit": 250, "max_items": 1000,
              "alpha": 0.05},
    "ci": {"num_samples": 32, "max_seq_length": 256, "num_fewshot": None, "limit": 60, "max_items": 400,
           "alpha": 0.10},
}

OPTIONS: tuple[Option, ...] = (
    Option("model", "model to test: hub id, local directory, GGUF file or bundled name (repeatable); with "
           "--quant-checkpoint, the base model the checkpoint was made from", Names, ["smollm2-135m-instruct"],
           repeat=True),
    Option("scheme", "quantization scheme: W4A16, W8A8, W8A16, or any compressed-tensors preset (W4A16_ASYM, FP8, "
           "FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, NVFP4, MXFP4A16, W4AFP8, ...) (repeatable)", Names, ["W4A16", "W8A8"],
           repeat=True),
    Option("algorithm", "how weights are quantized: auto (the guides' GPTQ for W4A16/W8A16, SmoothQuant + GPTQ for "
           "W8A8, round-to-nearest for other schemes), rtn, gptq, awq, awq+gptq, smoothquant+gptq",
           Literal["auto", "rtn", "gptq", "awq", "awq+gptq", "smoothquant+gptq"], "auto"),
    Option("recipe", "an llm-compressor recipe file (YAML) to build with, run as written through oneshot, instead of "
           "--quant-scheme (its checkpoint's scheme is read from what it saved)", Text),
    Option("kv_cache", "quantize the KV cache too (kv_cache_scheme, calibrated scales): fp8", Literal["fp8"]),
    Option("checkpoint", "gate this compressed-tensors checkpoint (a directory built elsewhere) instead of building "
           "one; repeatable; its scheme is read from its config", Names, repeat=True),
    Option("task", "lm-eval task(s) for accuracy gates (repeatable)", Names, ["quant_facts"], repeat=True),
    Option("profile", "settings profile: 'guide' (512 samples x 2048 tokens, 5-shot, 250 items first, up to 1000, "
           "alpha 0.05) or 'ci' (32 x 256, the task's shots, 60 items first, up to 250, alpha 0.10)",
           Literal[tuple(PROFILES)], "guide"),
    Option("limit", "items evaluated at a gate's first look (a seeded random sample of the task)", PositiveInt),
    Option("max_items", "items a gate may use at most: an undecided gate evaluates more, up to this", PositiveInt),
    Option("item_seed", "seed of the random order in which a task's items are drawn", Count, 0),
    Option("alpha", "error rate of each gate decision: a gate is PASS or FAIL at confidence 1 - alpha (default: "
           "the profile's)", between(0, 0.5)),
    Option("undecided", "what an UNDECIDED gate does: fail, pass or xfail", Literal["fail", "pass", "xfail"], "fail"),
    Option("num_fewshot", "few-shot examples per prompt", Count),
    Option("num_samples", "calibration samples", PositiveInt),
    Option("max_seq_length", "calibration sequence length in tokens", PositiveInt),
    Option("calibration", "calibration data: 'bundled', a hub dataset id[:split], or a .jsonl/.json/.parquet file",
           Text, "bundled"),
    Option("calibration_batch_size", "calibration batch size: a positive integer, or 'auto' (1 on a CPU, the "
           "largest measured to pay on a GPU; 1 for AWQ)", Literal["auto"] | PositiveInt, "auto"),
    Option("group_size", "weight group size, or block size of a block scheme (FP8_BLOCK) (a positive integer, -1 "
           "per channel, or 'auto' for the largest that divides every layer)", Annotated[int | str, PlainValidator(_group_size)]),
    Option("actorder", "GPTQ activation ordering: static, group, weight or none", Literal["static", "group", "weight",
                                                                                        "none"]),
    Option("dampening_frac", "GPTQ dampening fraction", between(0, 1)),
    Option("smoothing_strength", "SmoothQuant strength (W8A8's default recipe, or --quant-algorithm "
           "smoothquant+gptq)", between(0, 1)),
    Option("ignore", "layers (names or re: patterns) left unquantized, besides lm_head", Names),
    Option("metric", "metric gated per task in the shipped suite (default: the task's primary metric)", Text),
    Option("recovery", "shipped suite: quantized/base ratio each task's metric must reach", between(0, 1.5, True, False),
           0.95),
    Option("max_bos_extra_loss", "shipped suite: how much more the quantized model may lose without BOS than the "
           "base", Annotated[float, Field(ge=0)], 0.05),
    Option("max_kl", "shipped suite: largest mean KL(base || quantized) per token", Positive, 0.5),
    Option("min_top1", "shipped suite: smallest top-1 next-token agreement with the base", between(0, 1, False, False),
           0.7),
    Option("backend", f"evaluation backend: auto or one of {', '.join(backend_names())}",
           Literal[("auto", *backend_names())], "auto"),
    Option("vllm_python", "python interpreter of the vLLM environment", Text),
    Option("cpu_w4a8", "let vLLM's CPU build run W4A16 checkpoints with int8 activations on CPUs with AMX "
           "(VLLM_CPU_INT4_W4A8=1); off by default, so gates measure the 16-bit activations of a GPU deployment",
           bool, False, flag=True),
    Option("gpu_memory", "share of the GPU each vLLM engine asks for: 'auto' (sized to the model: its weights, a KV "
           "cache for the evaluation's batch, 4 GiB for activations) or a number in (0, 0.95]",
           Literal["auto"] | between(0, 0.95, True, False), "auto"),
    Option("engine_mode", "how vLLM starts on a GPU: 'auto' or 'eager' (no compilation: at a gate's item counts it "
           "costs more than it saves, docs/GPU.md), 'compiled' (torch.compile and CUDA graphs, vLLM's compile cache "
           "kept in the store)", Literal["auto", "eager", "compiled"], "auto"),
    Option("ahead", "on a GPU, evaluate each model as soon as it is ready, beside the builds and the other engines "
           "(vLLM's engines are processes of their own): 'auto' (without pytest-xdist every checkpoint is built when the "
           "tests start) or 'off' (each evaluation when its first test asks)", Literal["auto", "off"], "auto"),
    Option("eval_timeout", "seconds one evaluation subprocess may run", Positive, 1800.0),
    Option("device", "device for builds and transformers evaluation: auto, cpu or cuda", Literal["auto", "cpu", "cuda"],
           "auto"),
    Option("cache_dir", "checkpoint and result store (default: <pytest cache dir>/quant)", Text),
    Option("shared_store", "a store CI runners share, as an fsspec URL (s3://bucket/prefix, gs://, az://, a mounted "
           "path): entries missing from the local store are fetched from it (checked against their manifest), "
           "entries built here are published to it", Text),
    Option("rebuild", "rebuild checkpoints and re-run evaluations even when cached", bool, False, flag=True),
    Option("trust_remote_code", "allow model repositories to run their own code", bool, False, flag=True),
    Option("baseline", "compare metrics with this baseline file", Text),
    Option("save_baseline", "write measured metrics to this baseline file (merged into it when it exists)", Text),
    Option("overwrite_baseline", "allow --quant-save-baseline to update an existing file", bool, False, flag=True),
    Option("baseline_rtol", "relative drop from the baseline that counts as a regression", between(0, 1, False, True),
           0.05),
    Option("report", "write a JSON report of every gate to this path", Text),
    Option("summary", "write a Markdown summary of the gates (with flipped items) to this path, and their figure "
           "beside it as .png (needs matplotlib); also appended to $GITHUB_STEP_SUMMARY when set", Text),
    Option("build_gpus", "GPUs for a build (distributed oneshot through torchrun when > 1)", PositiveInt, 1),
    Option("build_timeout", "seconds a multi-GPU build (torchrun and its ranks) may run", Positive, 7200.0),
    Option("eval_gpus", "GPUs for an evaluation (vLLM tensor parallel / hf parallelize when > 1)", PositiveInt, 1),
)
BY_NAME = {o.name: o for o in OPTIONS}


def add_options(parser: Any) -> None:
    """Register the command-line and ini options with pytest's parser."""
    group = parser.getgroup("quant", "pytest-quant: quantize, evaluate, gate")
    for o in OPTIONS:
        kwargs: dict[str, Any] = {"dest": "quant_" + o.name, "help": f"{o.help} [env {o.env}, ini {o.ini}]"}
        if o.flag:
            kwargs.update(action="store_true", default=None)
        elif o.repeat:
            kwargs.update(action="append", default=None)
        else:
            kwargs.update(default=None)
        group.addoption(o.cli, **kwargs)
        parser.addini(o.ini, o.help, type="linelist" if o.repeat else "string", default=None)


INI_UNSET = (None, [], "")  # an ini value nobody set


def _given(values: dict[str, Any], empty: tuple[Any, ...] = (None, [])) -> dict[str, Any]:
    """The values a user set (an unset pytest option is None or [], an unset ini value also "")."""
    return {k: v for k, v in values.items() if v not in empty}


def _from_pytest(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every option's command-line and ini value, by option name."""
    return ({o.name: config.getoption("quant_" + o.name) for o in OPTIONS},
            {o.name: config.getini(o.ini) for o in OPTIONS})


def asked(config: Any) -> bool:
    """Whether pytest's command line or ini file names a quant option (the environment alone does not)."""
    cli, ini = _from_pytest(config)
    return bool(_given(cli) or _given(ini, INI_UNSET))


@cache
def _models() -> tuple[type[BaseModel], type[BaseModel]]:
    """The options as pydantic models (made on the first session, so an inert plugin does not pay for them): one
    source's values (None: unset), and the ``QUANT_*`` environment read by pydantic-settings (no .env, no secrets)."""
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class EnvironmentSource(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="QUANT_", env_ignore_empty=True, enable_decoding=False)

        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings], env_settings: PydanticBaseSettingsSource,
                                       **others: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
            return (env_settings,)

    fields: dict[str, Any] = {o.name: (Optional[o.type], None) for o in OPTIONS}
    return (create_model("Values", __config__=ConfigDict(extra="forbid"), **fields),
            create_model("Environment", __base__=EnvironmentSource, **fields))


def _bad(e: ValidationError, where: Callable[[str], str]) -> QuantUsageError:
    """pydantic's first error as one line: the source, the value, the option and what is allowed."""
    errors = e.errors(include_url=False)
    name = str(errors[0]["loc"][0])
    raw = errors[0]["input"]
    shown = raw[0] if isinstance(raw, list) and len(raw) == 1 else raw
    allowed = dict.fromkeys(err["msg"].removeprefix("Value error, ") for err in errors if err["loc"][0] == name)
    text = " or ".join(m[:1].lower() + m[1:] for m in allowed)
    return QuantUsageError(f"{where(name)}: bad value {shown!r} for {name}: {text}")


def _checked(where: Callable[[str], str], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values one source set, validated (``None``: the environment's, read by pydantic-settings)."""
    given, environment = _models()
    try:
        m = environment() if values is None else given.model_validate(values)
    except ValidationError as e:
        raise _bad(e, where) from None
    return {k: getattr(m, k) for k in m.model_fields_set if getattr(m, k) is not None}


def _cli(name: str) -> str:
    return BY_NAME[name].cli


def _env(name: str) -> str:
    return BY_NAME[name].env


def _ini(name: str) -> str:
    return "ini " + BY_NAME[name].ini


class Settings:
    """Options resolved for one session (command line > environment > ini > marker > profile > default).

    Each source is validated when the settings are made, so a bad value stops the session before collection."""

    def __init__(self, cli: dict[str, Any] | None = None, ini: dict[str, Any] | None = None) -> None:
        self._layers = (
            (_checked(_cli, _given(cli or {})), _cli),
            (_checked(_env), _env),
            (_checked(_ini, _given(ini or {}, INI_UNSET)), _ini),
        )
        self.profile = self.get("profile")

    @classmethod
    def from_pytest(cls, config: Any) -> "Settings":
        return cls(*_from_pytest(config))

    def source(self, name: str) -> tuple[Any, str] | None:
        """(value, where it came from) for a value set by the user, or None."""
        for values, where in self._layers:
            if name in values:
                return values[name], where(name)
        return None

    def get(self, name: str, marker: dict[str, Any] | None = None) -> Any:
        found = self.source(name)
        if found is not None:
            return found[0]
        if marker and marker.get(name) is not None:
            return check(name, marker[name], "marker argument")
        if name != "profile" and name in PROFILES[self.profile]:
            return PROFILES[self.profile][name]
        return BY_NAME[name].default


def check(name: str, value: Any, where: str) -> Any:
    """One option's value from elsewhere (a marker argument, a YAML field), checked by the option's type."""
    return _checked(lambda n: where, {name: value}).get(name)
