"""Every pytest-quant option, and the one order they are resolved in.

Order (as pytest-timeout): command line, then environment variable, then ini, then the
test's marker arguments, then the profile's value, then the built-in default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import QuantUsageError


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in {"1", "true", "yes", "on"}:
        return True
    if s in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {v!r}")


def _list(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out += _list(x)
        return out
    return [p.strip() for p in str(v).replace("\n", ",").split(",") if p.strip()]


def _optional_int(v: Any) -> int | None:
    return None if v in (None, "", "none", "None") else int(v)


@dataclass(frozen=True)
class Option:
    name: str  # attribute name, also the ini name with a "quant_" prefix
    help: str
    convert: Callable[[Any], Any] = str
    default: Any = None
    flag: bool = False  # a store_true command-line flag
    repeat: bool = False  # command line may repeat it (append)
    choices: tuple[str, ...] | None = None

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
    "guide": {"num_samples": 512, "max_seq_length": 2048, "num_fewshot": 5, "limit": 250},
    "ci": {"num_samples": 32, "max_seq_length": 256, "num_fewshot": None, "limit": 60},
}

OPTIONS: tuple[Option, ...] = (
    Option("model", "model to test: hub id, local directory, GGUF file or bundled name (repeatable)",
           _list, ["smollm2-135m-instruct"], repeat=True),
    Option("scheme", "quantization scheme: W4A16, W8A8, W8A16 (repeatable)", _list, ["W4A16", "W8A8"],
           repeat=True),
    Option("task", "lm-eval task(s) for accuracy gates (repeatable)", _list, ["quant_facts"], repeat=True),
    Option("profile", "settings profile: 'guide' (512 samples, 2048 tokens, 5-shot, limit 250) or 'ci'",
           str, "guide", choices=tuple(PROFILES)),
    Option("limit", "evaluate at most this many items per task", _optional_int),
    Option("num_fewshot", "few-shot examples per prompt", _optional_int),
    Option("num_samples", "calibration samples", _optional_int),
    Option("max_seq_length", "calibration sequence length in tokens", _optional_int),
    Option("calibration", "calibration data: 'bundled', a hub dataset id[:split], or a .jsonl/.parquet file",
           str, "bundled"),
    Option("group_size", "weight group size for W4A16 (an integer, or 'auto' for the largest that divides "
           "every layer)", str),
    Option("actorder", "GPTQ activation ordering: static, group, weight or none", str),
    Option("dampening_frac", "GPTQ dampening fraction", float),
    Option("smoothing_strength", "SmoothQuant strength for W8A8", float),
    Option("ignore", "layers (names or re: patterns) left unquantized, besides lm_head", _list),
    Option("metric", "metric gated per task in the shipped suite (default: the task's primary metric)", str),
    Option("recovery", "shipped suite: quantized/base ratio each task's metric must reach", float, 0.95),
    Option("stderr_k", "shipped suite: standard errors of slack on accuracy and BOS gates", float, 2.0),
    Option("max_bos_extra_loss", "shipped suite: how much more the quantized model may lose without BOS "
           "than the base", float, 0.05),
    Option("max_kl", "shipped suite: largest mean KL(base || quantized) per token", float, 0.5),
    Option("min_top1", "shipped suite: smallest top-1 next-token agreement with the base", float, 0.7),
    Option("backend", "evaluation backend", str, "auto", choices=("auto", "vllm", "hf")),
    Option("vllm_python", "python interpreter of the vLLM environment", str),
    Option("eval_timeout", "seconds one evaluation subprocess may run", float, 1800.0),
    Option("device", "device for builds and transformers evaluation: auto, cpu or cuda", str, "auto",
           choices=("auto", "cpu", "cuda")),
    Option("cache_dir", "checkpoint and result store (default: <pytest cache dir>/quant)", str),
    Option("rebuild", "rebuild checkpoints and re-run evaluations even when cached", _bool, False, flag=True),
    Option("trust_remote_code", "allow model repositories to run their own code", _bool, False, flag=True),
    Option("baseline", "compare metrics with this baseline file", str),
    Option("save_baseline", "write measured metrics to this baseline file", str),
    Option("overwrite_baseline", "allow --quant-save-baseline to replace an existing file", _bool, False,
           flag=True),
    Option("baseline_rtol", "relative drop from the baseline that counts as a regression", float, 0.05),
    Option("report", "write a JSON report of every gate to this path", str),
    Option("build_gpus", "GPUs for a build (distributed oneshot through torchrun when > 1)", int, 1),
    Option("eval_gpus", "GPUs for an evaluation (vLLM tensor parallel / hf parallelize when > 1)", int, 1),
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


class Settings:
    """Options resolved for one session (command line > environment > ini > marker > profile > default)."""

    def __init__(self, cli: dict[str, Any] | None = None, ini: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self._cli = {k: v for k, v in (cli or {}).items() if v not in (None, [])}
        self._ini = {k: v for k, v in (ini or {}).items() if v not in (None, [], "")}
        self._env = dict(os.environ if env is None else env)
        self.profile = self.get("profile")

    @classmethod
    def from_pytest(cls, config: Any) -> "Settings":
        cli = {o.name: config.getoption("quant_" + o.name) for o in OPTIONS}
        ini = {o.name: config.getini(o.ini) for o in OPTIONS}
        return cls(cli, ini)

    def get(self, name: str, marker: dict[str, Any] | None = None) -> Any:
        o = BY_NAME[name]
        if name in self._cli:
            raw, where = self._cli[name], o.cli
        elif o.env in self._env and self._env[o.env] != "":
            raw, where = self._env[o.env], o.env
        elif name in self._ini:
            raw, where = self._ini[name], f"ini {o.ini}"
        elif marker and marker.get(name) is not None:
            raw, where = marker[name], "marker argument"
        elif name != "profile" and name in PROFILES[self.profile]:
            return PROFILES[self.profile][name]
        else:
            return o.default
        try:
            value = o.convert(raw)
        except (TypeError, ValueError) as e:
            raise QuantUsageError(f"{where}: bad value {raw!r} for {name}: {e}") from None
        if o.choices and value not in o.choices:
            raise QuantUsageError(f"{where}: {value!r} is not one of {', '.join(o.choices)}")
        return value
