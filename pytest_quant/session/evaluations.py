"""How a session evaluates its models (a mixin of :class:`pytest_quant.session.session.QuantSession`): the evaluator,
the runs and item orders of gates, the items planned at collection, their results (fetched once per model load, or
taken from the evaluation started ahead: session/ahead.py) and fidelity."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pytest_quant.evaluate.evaluator import EvalRun, Evaluator, ItemResults
from pytest_quant.evaluate.fidelity import fidelity
from pytest_quant.evaluate.gpu_memory import gpu_work
from pytest_quant.evaluate.tasks import item_order, task_size
from pytest_quant.gate.stats import plan_looks
from pytest_quant.infra.hardware import limit_threads

if TYPE_CHECKING:
    from pytest_quant.infra.hardware import Device
    from pytest_quant.infra.store import Store
    from pytest_quant.session.ahead import Ahead
    from pytest_quant.session.session import Case, Target
    from pytest_quant.session.settings import Settings


class Evaluations:
    """Mixed into QuantSession: what it asks of the session (settings, store, device; and its backend_object, path,
    base and checkpoint)."""

    settings: Settings
    store: Store
    backend: str
    compute: str
    device: Device
    trust_remote_code: bool
    rebuild: bool
    planned: dict[Target, dict[EvalRun, set[int]]]
    _results: dict[tuple[Target, EvalRun], ItemResults]
    _ahead: Ahead[dict[EvalRun, ItemResults]]

    def evaluator(self, backend: str | None = None) -> Evaluator:
        return Evaluator(self.store, self.backend_object(backend or self.backend), self.compute,
                         self.settings.get("eval_timeout"), self.trust_remote_code, self.rebuild, self.device)

    def run(self, task: str, marker: dict[str, Any] | None = None, add_bos_token: bool = True,
            apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
            gen_kwargs: str | None = None) -> EvalRun:
        return EvalRun(task, num_fewshot=self.settings.get("num_fewshot", marker), add_bos_token=add_bos_token,
                       apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
                       gen_kwargs=gen_kwargs)

    def order(self, task: str, marker: dict[str, Any] | None = None) -> list[int]:
        """The task's items in the order gates draw them (seeded by --quant-item-seed)."""
        return item_order(task, self.settings.get("item_seed", marker))

    def looks(self, task: str, marker: dict[str, Any] | None = None) -> list[int]:
        """Item counts at which a gate on ``task`` decides: ``limit``, doubled, up to ``max_items`` (never fewer
        than ``limit``), all capped at the task's size."""
        size, first = task_size(task), self.settings.get("limit", marker)
        return plan_looks(min(first, size), min(max(first, self.settings.get("max_items", marker)), size))

    def plan(self, target: Target, run: EvalRun, ids: list[int]) -> None:
        """Remember items a later test will need, so one model load serves them all."""
        self.planned.setdefault(target, {}).setdefault(run, set()).update(ids)

    def _wanted(self, target: Target) -> dict[EvalRun, list[int]]:
        """The planned items of ``target`` not held yet, each run with the items it holds (one request, one key)."""
        wanted: dict[EvalRun, list[int]] = {}
        for r, planned in self.planned.get(target, {}).items():
            have = set(self._results[(target, r)].items) if (target, r) in self._results else set()
            if planned - have:
                wanted[r] = sorted(planned | have)
        return wanted

    def _evaluate(self, target: Target, wanted: dict[EvalRun, list[int]]) -> dict[EvalRun, ItemResults]:
        limit_threads()
        return self.evaluator(target.backend).evaluate(
            self.path(target), wanted, gpus=self.settings.get("eval_gpus", dict(target.gpus)),
            engine=dict(target.engine), label=target.label)

    def items(self, target: Target, run: EvalRun, ids: list[int]) -> ItemResults:
        """Per-item results of ``run`` on ``target`` for ``ids``; planned runs of the target come along (or came, in
        the evaluation started ahead, which this waits for)."""
        self._results.update({(target, r): v for r, v in (self._ahead.take(target) or {}).items()})
        held = self._results.get((target, run))
        if held is None or not set(ids) <= set(held.items):
            wanted = self._wanted(target)
            wanted[run] = sorted(set(ids) | set(wanted.get(run, [])) | set(held.items if held else ()))
            self._results.update({(target, r): v for r, v in self._evaluate(target, wanted).items()})
            held = self._results[(target, run)]
        return dataclasses.replace(held, items={i: held.items[i] for i in ids})

    def fidelity(self, case: Case) -> dict[str, Any]:
        base_path, _ = self.base(case.model)
        ck = self.checkpoint(case)
        limit_threads()
        with gpu_work(self.compute):
            return fidelity(base_path, ck.path, self.store, device=self.compute, rebuild=self.rebuild)
