"""The three markers: their arguments, one pydantic model per marker (``extra="forbid"``, strict types), checked at
collection (metric names against the task included).

- ``quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, rtol=, alpha=,
  limit=, max_items=, item_seed=, num_fewshot=, add_bos_token=True, apply_chat_template=False)``
- ``quant_bos(task, metric, max_delta=, max_extra_loss=, alpha=, limit=, max_items=, item_seed=,
  num_fewshot=, apply_chat_template=False)``
- ``quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=)``
- ``quant_recipe(path)``: the test's checkpoint is built with this llm-compressor recipe file (relative to the test's
  file) instead of the session's schemes

``alpha``, ``limit``, ``max_items``, ``item_seed`` and ``num_fewshot`` are options too: a value given on the
command line, in the environment or in the ini file wins over the marker's (docs/REFERENCE.md), and a marker's value
is checked by the option's own type.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_quant.evaluate.backends import names as backend_names
from pytest_quant.evaluate.tasks import check_metric
from pytest_quant.gate.scores import Threshold
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.session.settings import check

MARKERS = {
    "quant_accuracy": "quant_accuracy(task, metric, min_value=, max_value=, max_drop=, recovery=, expected=, "
                      "rtol=, alpha=, limit=, max_items=, item_seed=, num_fewshot=, add_bos_token=True, "
                      "apply_chat_template=False): gate an lm-eval metric of the checkpoint under test",
    "quant_bos": "quant_bos(task, metric, max_delta=, max_extra_loss=, alpha=, limit=, max_items=, item_seed=, "
                 "num_fewshot=, apply_chat_template=False): check BOS tokens in the evaluated prompts and the metric "
                 "with and without BOS",
    "quant_requires": "quant_requires(scheme=, min_capability=, max_capability=, backend=, gpus=, gpu_memory_gib=): "
                      "skip unless the device and backend can run it",
    "quant_recipe": "quant_recipe(path): gate the checkpoint built with this llm-compressor recipe file (relative to "
                    "the test's file) instead of the session's schemes",
}
OPTION_ARGS = ("alpha", "limit", "max_items", "item_seed", "num_fewshot")  # marker values of session options
Name = Annotated[str, Field(min_length=1)]
Number = Annotated[float, Field(allow_inf_nan=False)]


def _capability(v: float | None) -> int | None:
    """8.0 and 80 both mean Ampere."""
    if v is None:
        return None
    if v <= 0:
        raise ValueError(f"a capability must be positive, got {v:g}")
    return int(round(v * 10)) if v < 20 else int(v)


Capability = Annotated[Number | None, AfterValidator(_capability)]


class MarkerArgs(BaseModel):
    """A marker's arguments: unknown ones refused, types strict (no strings for numbers, no 1 for True)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    positional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The marker's arguments, or a usage error in one line naming the marker and the argument."""
        if len(args) > len(cls.positional):
            raise QuantUsageError(f"{name} takes at most {len(cls.positional)} positional arguments"
                                  f" ({', '.join(cls.positional) or 'none'})")
        given = dict(zip(cls.positional, args))
        if set(given) & set(kwargs):
            raise QuantUsageError(f"{name}: {', '.join(sorted(set(given) & set(kwargs)))} given twice")
        given.update(kwargs)
        try:
            return cls.model_validate(given).checked(name)
        except ValidationError as e:
            raise QuantUsageError(_message(name, cls, e)) from None

    def checked(self, name: str) -> Any:
        return self


def _message(name: str, cls: type[MarkerArgs], e: ValidationError) -> str:
    errors = e.errors()
    unknown = [str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden"]
    if unknown:
        return (f"{name} got unknown argument(s) {', '.join(sorted(unknown))}; it takes "
                f"{', '.join(sorted(cls.model_fields))}")
    err = errors[0]
    where = ".".join(str(x) for x in err["loc"])
    if err["type"] == "missing":
        return f"{name} needs {where}=..."
    return f"{name}: {where}: {err['msg'].removeprefix('Value error, ')}, got {err['input']!r}"


class GateArgs(MarkerArgs):
    """What the two gate markers share: the task and metric, the session options they may set, the chat template."""

    positional: ClassVar[tuple[str, ...]] = ("task", "metric")
    task: Name
    metric: Name
    alpha: int | float | None = None  # as typed, for the option's message
    limit: int | None = None
    max_items: int | None = None
    item_seed: int | None = None
    num_fewshot: int | None = None
    apply_chat_template: bool = False

    @property
    def options(self) -> tuple[tuple[str, Any], ...]:
        return tuple((a, getattr(self, a)) for a in OPTION_ARGS if getattr(self, a) is not None)

    @property
    def marker(self) -> dict[str, Any]:
        """The marker's values of session options (Settings.get reads them below the user's own)."""
        return dict(self.options)

    def checked(self, name: str) -> Any:
        for a, v in self.options:
            check(a, v, name)  # the option's own rules (alpha in (0, 1), limit > 0, ...)
        check_metric(self.task, self.metric)
        return self


class AccuracySpec(GateArgs):
    min_value: Number | None = None
    max_value: Number | None = None
    max_drop: Number | None = None
    recovery: Number | None = None
    expected: Number | None = None
    rtol: Number | None = None
    add_bos_token: bool = True

    @property
    def threshold(self) -> Threshold:
        return Threshold(**{f.name: getattr(self, f.name) for f in fields(Threshold)})

    def checked(self, name: str) -> Any:
        self.threshold.validate(self.metric)
        return super().checked(name)


class BosSpec(GateArgs):
    max_delta: Annotated[Number, Field(ge=0)] | None = None
    max_extra_loss: Annotated[Number, Field(ge=0)] | None = None


class RequiresSpec(MarkerArgs):
    scheme: str | None = None
    min_capability: Capability = None
    max_capability: Capability = None
    backend: str | None = None
    gpus: Annotated[int, Field(gt=0)] | None = None
    gpu_memory_gib: Annotated[Number, Field(gt=0)] | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is not None and v not in backend_names():
            raise ValueError(f"backend must be one of {', '.join(map(repr, backend_names()))}")
        return v

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        from pytest_quant.build.schemes import known

        if v is not None:
            try:
                known(v)
            except QuantUsageError as e:
                raise ValueError(str(e)) from None
        return v


class RecipeSpec(MarkerArgs):
    """A recipe file for the test's checkpoint (read and checked by llm-compressor when the test is collected)."""

    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: Name


SPECS: dict[str, type[MarkerArgs]] = {"quant_accuracy": AccuracySpec, "quant_bos": BosSpec,
                                      "quant_requires": RequiresSpec, "quant_recipe": RecipeSpec}


def parse_markers(item: Any) -> dict[str, list[Any]]:
    """Every quant marker on a test item, parsed (a bad argument raises QuantUsageError)."""
    return {name: [spec.parse(name, m.args, m.kwargs) for m in item.iter_markers(name)]
            for name, spec in SPECS.items()}
