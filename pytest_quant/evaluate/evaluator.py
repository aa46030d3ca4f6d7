"""Evaluate a model directory with lm-eval, item by item, through vLLM (its own interpreter) or transformers.

What is cached is the result of each item: a run (task x settings) evaluates the items asked for that the
store does not hold yet, all runs of one model in one model load, and writes them as a new store entry
under ``evals/<run key>/``. The run key covers the model's content digest (never a name the caller
passes), the run's settings, the task's definition and data, the backend, its model arguments, the library
versions and the runner; which items were evaluated is each entry's own key. So a gate that needs more
items evaluates only the new ones, and a checkpoint that changes gets new results.
lm-eval's own ``use_cache`` is not used: it keys on the request alone and would serve one model's answers
to another.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_quant.evaluate.backends import Backend, make_backend
from pytest_quant.evaluate.backends.transformers import TransformersBackend
from pytest_quant.evaluate.engine import RUNNER
from pytest_quant.evaluate.tasks import Value, fewshot, task_digest, task_metrics, write_task_dir
from pytest_quant.infra.errors import QuantError, QuantUsageError
from pytest_quant.infra.machine import elsewhere_note, emulation, signature
from pytest_quant.infra.files import atomic_write_text, content_digest, digest, file_digest
from pytest_quant.infra.store import Store


@dataclass(frozen=True)
class EvalRun:
    """What is evaluated on each item: a task and the settings of its prompts (not which items)."""
    task: str
    num_fewshot: int | None = None
    add_bos_token: bool = True
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: str | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise QuantUsageError(f"num_fewshot must be 0 or more, got {self.num_fewshot}")
        object.__setattr__(self, "num_fewshot", fewshot(self.task, self.num_fewshot))

    @property
    def id(self) -> str:
        return digest(asdict(self))[:16]

    def describe(self) -> str:
        return f"{self.task}(bos={self.add_bos_token}, fewshot={self.num_fewshot})"


@dataclass
class ItemResults:
    """Per-item results of one run on one model: item id -> {metric: value}."""
    items: dict[int, dict[str, Value]]
    bos_prefix_counts: dict[str, int]
    backend: str
    seconds: float  # evaluation time spent on these items, summed over the entries they came from
    kernels: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False  # every item came from the store
    numerics: dict[str, Any] = field(default_factory=dict)  # code paths that computed them (lm_runner.numerics)
    elsewhere: str | None = None  # says so when some were measured on another machine (machine.elsewhere_note)
    machine: dict[str, Any] = field(default_factory=dict)  # the evaluating machine's signature (machine.signature)
    answers: dict[int, Any] = field(default_factory=dict)  # what the model answered (lm_runner._model_answer), per item
    engine: dict[str, Any] = field(default_factory=dict)  # how the engine started and what it reserved (vLLM's log)

    def values(self, metric: str, ids: list[int]) -> list[Value]:
        """The metric's value on each of ``ids``, in that order."""
        missing = [i for i in ids if i not in self.items]
        if missing:
            raise QuantError(f"items {missing[:5]} were not evaluated")
        known = set(self.items[ids[0]]) if ids else set()
        if metric not in known:
            raise QuantUsageError(f"metric {metric!r} not produced; this task gives {', '.join(sorted(known))}")
        out = [self.items[i][metric] for i in ids]
        if any(v is None for v in out):
            raise QuantUsageError(f"metric {metric!r} is not an average over items (lm-eval aggregates it over "
                                  "the whole set), so it cannot be gated item by item; choose a mean or "
                                  "perplexity metric")
        return out


def model_args(backend: Backend, path: Path, device: str, gpus: int, trust_remote_code: bool,
               engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """lm-eval model arguments of ``backend``; ``engine`` overrides them (a YAML config's engine fields)."""
    engine = dict(engine or {})
    args = backend.model_args(path, device, gpus, engine)
    if trust_remote_code or engine.pop("trust_remote_code", False):
        args["trust_remote_code"] = True
    return {**args, **engine}


@dataclass(frozen=True)
class Evaluator:
    """How one session evaluates: backend, device, limits (the same for every model)."""
    store: Store
    backend: Backend
    device: str = "cpu"
    timeout: float = 1800.0
    trust_remote_code: bool = False
    rebuild: bool = False
    hardware: Any = None  # the hardware.Device evaluated on, for the machine signature

    def evaluate(self, path: Path, wanted: dict[EvalRun, list[int]], gpus: int = 1, engine: dict[str, Any] | None = None,
                 label: str = "model") -> dict[EvalRun, ItemResults]:
        """Per-item results of each run on the model at ``path``, for the item ids asked for.

        Items the store holds are read; the rest are evaluated, every run in one model load.
        """
        identity = content_digest(path)
        engine = dict(engine or {})
        backend = self.backend
        backend.check(path, gpus)
        env_vars = {str(k): str(v) for k, v in (engine.pop("env_vars", None) or {}).items()}
        versions = backend.versions()
        args = model_args(backend, path, self.device, gpus, self.trust_remote_code, engine)
        settings = {k: v for k, v in args.items() if k != "pretrained"}
        runner_env = backend.env(self.device, env_vars)
        here = signature(self.hardware, runner_env)
        numerics = {**backend.numerics(runner_env), **emulation(runner_env)}
        runner = file_digest(RUNNER)  # how prompts are built and counted is part of the result
        include_path = write_task_dir(self.store.root / "tasks")

        def run_key(run: EvalRun) -> str:
            return self.store.key({"model": identity, "run": asdict(run),
                                   "task": task_digest(run.task, versions.get("lm_eval", "?")),
                                   "backend": backend.name, "device": self.device, "settings": settings,
                                   "env": env_vars, "numerics": numerics, "versions": versions, "runner": runner})

        for run in wanted:
            task_metrics(run.task)  # an unknown task fails here, before any model loads
        group = digest({"model": identity, "backend": backend.name})[:32]
        held: dict[EvalRun, list[Any]] = {}
        missing: dict[EvalRun, list[int]] = {}
        with self.store.locked("evals", group, f"evaluation of {label}"):
            for run, ids in wanted.items():
                entries = [] if self.rebuild else self.store.entries(f"evals/{run_key(run)}")
                held[run] = entries
                have = {int(i) for e in entries for i in e.manifest["info"]["items"]}
                todo = sorted(set(ids) - have)
                if todo:
                    missing[run] = todo
            if missing:
                self.store.log(f"evaluating {label} with {backend.name}: " + ", ".join(
                    f"{r.describe()} on {len(ids)} new items" for r, ids in missing.items()))
                request = {"backend": backend.name, "model_args": args, "include_path": str(include_path), "label": label,
                           "runs": [{**asdict(r), "id": r.id, "samples": ids} for r, ids in missing.items()]}
                response = backend.answer(request, runner_env, self.device, self.timeout, self.store.log)
                for run, ids in missing.items():
                    r = response["runs"][run.id]
                    info = {"items": [str(i) for i in ids], "bos_prefix_counts": r["bos_prefix_counts"],
                            "seconds": r["seconds"], "kernels": response["kernels"], "versions": response["versions"],
                            "numerics": response.get("numerics", {}), "machine": here, "backend": backend.name,
                            "engine": response.get("engine", {})}
                    body, answers = json.dumps(r["items"]), json.dumps(r.get("answers", {}))

                    def write(out: Path, body: str = body, answers: str = answers, info: dict = info) -> dict:
                        atomic_write_text(out / "items.json", body)
                        atomic_write_text(out / "answers.json", answers)
                        return info

                    held[run].append(self.store.put(f"evals/{run_key(run)}", {"items": ids}, write,
                                                    label=f"evaluation of {label}"))
        out = {}
        for run, ids in wanted.items():
            entries = held[run]
            items: dict[int, dict[str, Value]] = {}
            answers: dict[int, Any] = {}
            counts: dict[str, int] = {}
            seconds, useful, machines = 0.0, set(ids), []
            for e in entries:
                info = e.manifest["info"]
                if not useful & {int(i) for i in info["items"]}:
                    continue
                machines.append(info.get("machine"))
                items.update({int(k): v for k, v in json.loads((e.path / "items.json").read_text()).items()})
                if (e.path / "answers.json").is_file():  # entries written before answers were kept have none
                    answers.update({int(k): v for k, v in json.loads((e.path / "answers.json").read_text()).items()})
                for k, v in info["bos_prefix_counts"].items():
                    counts[k] = counts.get(k, 0) + v
                seconds += info["seconds"]
            last = entries[-1].manifest["info"] if entries else {}
            out[run] = ItemResults({i: items[i] for i in ids if i in items}, counts, backend.name, round(seconds, 2),
                                   last.get("kernels", []), last.get("versions", {}), cached=run not in missing,
                                   numerics=last.get("numerics", {}),
                                   elsewhere=elsewhere_note([m or {} for m in machines], here), machine=here,
                                   answers={i: answers[i] for i in ids if i in answers}, engine=last.get("engine", {}))
        return out


def evaluate(path: Path, wanted: dict[EvalRun, list[int]], store: Store, backend: str = TransformersBackend.name,
             **kwargs: Any
             ) -> dict[EvalRun, ItemResults]:
    """Per-item results of each run on the model at ``path`` (see :meth:`Evaluator.evaluate`); ``backend`` by name,
    with its own options among ``kwargs`` (vLLM: ``vllm_python``, ``cpu_w4a8``)."""
    options = {k: kwargs.pop(k) for k in ("device", "timeout", "trust_remote_code", "rebuild") if k in kwargs}
    backend_options = {"python": kwargs.pop("vllm_python", None), "cpu_w4a8": kwargs.pop("cpu_w4a8", False)}
    return Evaluator(store, make_backend(backend, **backend_options), **options).evaluate(path, wanted, **kwargs)
