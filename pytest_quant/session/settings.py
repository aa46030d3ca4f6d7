"""Every pytest-quant option, how its values are checked, and the one order they are resolved in.

Order (as pytest-timeout): command line, then environment variable, then ini, then the test's marker
arguments (or a YAML config's fields), then the profile's value, then the built-in default. Every value
from the first three sources is checked when the session starts (:meth:`Settings.validate`): a bad one is a
usage error (exit 4) in one line naming the option, where the value came from and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from pytest_quant.infra.errors import QuantUsageError


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in {"1", "true", "yes", "on"}:
        return True
    if s in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false (1/0, yes/no, on/off)")


def _list(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out += _list(x)
        return out
    return [p.strip() for p in str(v).replace("\n", ",").split(",") if p.strip()]


def _int(v: Any, allowed: str = "an integer") -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected {allowed}")
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        raise ValueError(f"expected {allowed}") from None


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None


def positive_int(v: Any) -> int:
    n = _int(v, "a positive integer")
    if n < 1:
        raise ValueError("expected a positive integer")
    return n


def non_negative_int(v: Any) -> int:
    n = _int(v, "an integer >= 0")
    if n < 0:
        raise ValueError("expected an integer >= 0")
    return n


def in_range(lo: float, hi: float, lo_open: bool = True, hi_open: bool = True) -> Callable[[Any], float]:
    """A converter to a number inside an interval (open or closed at each end)."""
    def convert(v: Any) -> float:
        x = _number(v)
        if (x <= lo if lo_open else x < lo) or (x >= hi if hi_open else x > hi):
            raise ValueError(f"expected a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return x
    return convert


def positive(v: Any) -> float:
    x = _number(v)
    if x <= 0:
        raise ValueError("expected a positive number")
    return x


def non_negative(v: Any) -> float:
    x = _number(v)
    if x < 0:
        raise ValueError("expected a number >= 0")
    return x


def group_size(v: Any) -> int | str:
    if str(v).strip() == "auto":
        return "auto"
    n = _int(v, "a positive integer, -1 (per channel) or 'auto'")
    if n == 0 or n < -1:
        raise ValueError("expected a positive integer, -1 (per channel) or 'auto'")
    return n


def batch_size(v: Any) -> int | str:
    return "auto" if str(v).strip() == "auto" else positive_int(v)


def choice(*allowed: str) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        s = str(v).strip()
        if s not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return s
    return convert


def text(v: Any) -> str:
    s = str(v).strip()
    if not s:
        raise ValueError("expected a non-empty value")
    return s


@dataclass(frozen=True)
class Option:
    name: str  # attribute name, also the ini name with a "quant_" prefix
    help: str
    convert: Callable[[Any], Any] = text
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
           "--quant-checkpoint, the base model the checkpoint was made from", _list, ["smollm2-135m-instruct"],
           repeat=True),
    Option("scheme", "quantization scheme: W4A16, W8A8, W8A16 (repeatable)", _list, ["W4A16", "W8A8"], repeat=True),
    Option("checkpoint", "gate this compressed-tensors checkpoint (a directory built elsewhere) instead of building "
           "one; repeatable; its scheme is read from its config", _list, repeat=True),
    Option("task", "lm-eval task(s) for accuracy gates (repeatable)", _list, ["quant_facts"], repeat=True),
    Option("profile", "settings profile: 'guide' (512 samples x 2048 tokens, 5-shot, 250 items first, up to 1000, "
           "alpha 0.05) or 'ci' (32 x 256, the task's shots, 60 items first, up to 250, alpha 0.10)",
           choice(*PROFILES), "guide"),
    Option("limit", "items evaluated at a gate's first look (a seeded random sample of the task)", positive_int),
    Option("max_items", "items a gate may use at most: an undecided gate evaluates more, up to this", positive_int),
    Option("item_seed", "seed of the random order in which a task's items are drawn", non_negative_int, 0),
    Option("alpha", "error rate of each gate decision: a gate is PASS or FAIL at confidence 1 - alpha (default: "
           "the profile's)", in_range(0, 0.5)),
    Option("undecided", "what an UNDECIDED gate does: fail, pass or xfail", choice("fail", "pass", "xfail"), "fail"),
    Option("num_fewshot", "few-shot examples per prompt", non_negative_int),
    Option("num_samples", "calibration samples", positive_int),
    Option("max_seq_length", "calibration sequence length in tokens", positive_int),
    Option("calibration", "calibration data: 'bundled', a hub dataset id[:split], or a .jsonl/.json/.parquet file",
           text, "bundled"),
    Option("calibration_batch_size", "calibration batch size: a positive integer, or 'auto' (1 on a CPU, the "
           "largest measured to pay on a GPU)", batch_size, "auto"),
    Option("group_size", "weight group size for W4A16 (a positive integer, -1 per channel, or 'auto' for the "
           "largest that divides every layer)", group_size),
    Option("actorder", "GPTQ activation ordering: static, group, weight or none", choice("static", "group", "weight",
                                                                                        "none")),
    Option("dampening_frac", "GPTQ dampening fraction", in_range(0, 1)),
    Option("smoothing_strength", "SmoothQuant strength for W8A8", in_range(0, 1)),
    Option("ignore", "layers (names or re: patterns) left unquantized, besides lm_head", _list),
    Option("metric", "metric gated per task in the shipped suite (default: the task's primary metric)", text),
    Option("recovery", "shipped suite: quantized/base ratio each task's metric must reach", in_range(0, 1.5, True, False),
           0.95),
    Option("max_bos_extra_loss", "shipped suite: how much more the quantized model may lose without BOS than the "
           "base", non_negative, 0.05),
    Option("max_kl", "shipped suite: largest mean KL(base || quantized) per token", positive, 0.5),
    Option("min_top1", "shipped suite: smallest top-1 next-token agreement with the base", in_range(0, 1, False, False),
           0.7),
    Option("backend", "evaluation backend: auto, vllm or hf", choice("auto", "vllm", "hf"), "auto"),
    Option("vllm_python", "python interpreter of the vLLM environment", text),
    Option("cpu_w4a8", "let vLLM's CPU build run W4A16 checkpoints with int8 activations on CPUs with AMX "
           "(VLLM_CPU_INT4_W4A8=1); off by default, so gates measure the 16-bit activations of a GPU deployment",
           _bool, False, flag=True),
    Option("eval_timeout", "seconds one evaluation subprocess may run", positive, 1800.0),
    Option("device", "device for builds and transformers evaluation: auto, cpu or cuda", choice("auto", "cpu", "cuda"),
           "auto"),
    Option("cache_dir", "checkpoint and result store (default: <pytest cache dir>/quant)", text),
    Option("rebuild", "rebuild checkpoints and re-run evaluations even when cached", _bool, False, flag=True),
    Option("trust_remote_code", "allow model repositories to run their own code", _bool, False, flag=True),
    Option("baseline", "compare metrics with this baseline file", text),
    Option("save_baseline", "write measured metrics to this baseline file (merged into it when it exists)", text),
    Option("overwrite_baseline", "allow --quant-save-baseline to update an existing file", _bool, False, flag=True),
    Option("baseline_rtol", "relative drop from the baseline that counts as a regression", in_range(0, 1, False, True),
           0.05),
    Option("report", "write a JSON report of every gate to this path", text),
    Option("summary", "write a Markdown summary of the gates (with flipped items) to this path, and their figure "
           "beside it as .png (needs matplotlib); also appended to $GITHUB_STEP_SUMMARY when set", text),
    Option("build_gpus", "GPUs for a build (distributed oneshot through torchrun when > 1)", positive_int, 1),
    Option("build_timeout", "seconds a multi-GPU build (torchrun and its ranks) may run", positive, 7200.0),
    Option("eval_gpus", "GPUs for an evaluation (vLLM tensor parallel / hf parallelize when > 1)", positive_int, 1),
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


class Settings:
    """Options resolved for one session (command line > environment > ini > marker > profile > default)."""

    def __init__(self, cli: dict[str, Any] | None = None, ini: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self._cli = _given(cli or {})
        self._ini = _given(ini or {}, INI_UNSET)
        env = dict(os.environ if env is None else env)
        self._env = {o.name: env[o.env] for o in OPTIONS if env.get(o.env, "") != ""}
        self.profile = self.get("profile")

    @classmethod
    def from_pytest(cls, config: Any) -> "Settings":
        return cls(*_from_pytest(config))

    def source(self, name: str) -> tuple[Any, str] | None:
        """(raw value, where it came from) for a value set by the user, or None."""
        o = BY_NAME[name]
        if name in self._cli:
            return self._cli[name], o.cli
        if name in self._env:
            return self._env[name], o.env
        if name in self._ini:
            return self._ini[name], f"ini {o.ini}"
        return None

    def get(self, name: str, marker: dict[str, Any] | None = None) -> Any:
        o = BY_NAME[name]
        found = self.source(name)
        if found is None and marker and marker.get(name) is not None:
            found = marker[name], "marker argument"
        if found is None:
            if name != "profile" and name in PROFILES[self.profile]:
                return PROFILES[self.profile][name]
            return o.default
        raw, where = found
        try:
            return o.convert(raw)
        except (TypeError, ValueError) as e:
            shown = raw if not isinstance(raw, list) or len(raw) != 1 else raw[0]
            raise QuantUsageError(f"{where}: bad value {shown!r} for {name}: {e}") from None

    def validate(self) -> None:
        """Convert every value the user set; the first bad one raises a one-line usage error."""
        for o in OPTIONS:
            self.get(o.name)
