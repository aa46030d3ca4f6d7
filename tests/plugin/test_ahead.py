"""Evaluations ahead of the tests (session/ahead.py) and engines side by side (evaluate/engine_pool.py): the session's own
logic on canned builds and evaluations, and the engine pool on the fake vLLM runner of test_reliability."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.build.models import resolve_model
from pytest_quant.evaluate.backends.base import Backend
from pytest_quant.evaluate.engine import EvaluationFailed
from pytest_quant.evaluate.engine_pool import ENGINES
from pytest_quant.evaluate.evaluator import EvalRun, ItemResults
from pytest_quant.session import ahead
from pytest_quant.session import session as session_module
from pytest_quant.session.session import QuantSession, Target
from pytest_quant.session.settings import Settings

from tests.plugin.test_reliability import fake_vllm

MODEL = "smollm2-135m-instruct"
RUN = EvalRun("quant_facts")


class Concurrent(Backend):
    name = "fake"
    concurrent = True


class Recorded(QuantSession):
    """A session on a GPU whose builds and evaluations are canned and recorded as (what, thread, start, end)."""

    events: list[tuple[str, str, float, float]]
    fail: set[str]

    def _evaluate(self, target: Target, wanted: dict[EvalRun, list[int]]) -> dict[EvalRun, ItemResults]:
        start = time.perf_counter()
        time.sleep(0.3)
        self.events.append((f"eval {target.label}", threading.current_thread().name, start, time.perf_counter()))
        if target.label in self.fail:
            raise EvaluationFailed("vLLM evaluation exited with code 1: ValueError: no memory")
        return {r: ItemResults({i: {"acc": 1.0} for i in ids}, {}, "fake", 0.3) for r, ids in wanted.items()}


def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Recorded:
    s = Recorded(Settings({"backend": "hf", **settings}), tmp_path / "store")
    s.events, s.fail = [], set()
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # this test may run in a worker of its own

    def build_checkpoint(model: str, recipe: Any, *args: Any, **kwargs: Any) -> Checkpoint:
        start = time.perf_counter()
        time.sleep(0.2)
        s.events.append((f"build {recipe.scheme}", threading.current_thread().name, start, time.perf_counter()))
        return Checkpoint(tmp_path / recipe.scheme, None, resolve_model(model), recipe, {"key": recipe.scheme}, False,
                          recipe.scheme)

    monkeypatch.setattr(session_module, "build_checkpoint", build_checkpoint)
    monkeypatch.setattr(Recorded, "compute", property(lambda self: "cuda"))
    monkeypatch.setattr(Recorded, "backend_object", lambda self, name: Concurrent())
    s._bases[MODEL] = (tmp_path / "base", None)
    for target in (Target(MODEL, backend="fake"), Target(MODEL, "W4A16", backend="fake"),
                   Target(MODEL, "W8A8", backend="fake")):
        s.plan(target, RUN, list(range(8)))
    return s


def test_on_a_gpu_each_model_is_evaluated_as_soon_as_it_is_ready_beside_the_next_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = session(tmp_path, monkeypatch)
    ahead.start(s)
    assert [e[0] for e in s.events if e[0].startswith("build")] == ["build W4A16", "build W8A8"]
    results = {t.label: s.items(t, RUN, list(range(8))) for t in list(s.planned)}
    assert all(len(r.items) == 8 for r in results.values())
    evals = {e[0]: e for e in s.events if e[0].startswith("eval")}
    builds = {e[0]: e for e in s.events if e[0].startswith("build")}
    assert len(evals) == 3, "each model evaluated once: the tests took what was evaluated ahead"
    assert all(e[1].startswith("pytest-quant ahead: ") for e in evals.values())
    base, w4, w8 = (evals[f"eval smollm2-135m-instruct-{n}"] for n in ("base", "W4A16", "W8A8"))
    assert base[2] < builds["build W4A16"][3], "the base model is evaluated while the first checkpoint builds"
    assert builds["build W4A16"][3] <= w4[2] < builds["build W8A8"][3], "W4A16 is evaluated while W8A8 builds"
    assert w8[2] >= builds["build W8A8"][3]


def test_an_evaluation_that_failed_ahead_fails_the_test_that_needs_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = session(tmp_path, monkeypatch)
    s.fail = {"smollm2-135m-instruct-W4A16"}
    ahead.start(s)
    w4 = Target(MODEL, "W4A16", backend="fake")
    with pytest.raises(EvaluationFailed, match="ValueError: no memory"):
        s.items(w4, RUN, [0, 1])
    assert len(s.items(Target(MODEL, backend="fake"), RUN, [0, 1]).items) == 2


@pytest.mark.parametrize("how", ["off", "xdist", "cpu"])
def test_nothing_runs_ahead_when_asked_not_to_or_on_a_cpu_and_a_worker_builds_only_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    s = session(tmp_path, monkeypatch, **({"ahead": "off"} if how == "off" else {}))
    if how == "xdist":
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    if how == "cpu":
        monkeypatch.setattr(Recorded, "compute", property(lambda self: "cpu"))
    ahead.start(s)
    s.items(Target(MODEL, backend="fake"), RUN, [0])
    ran = [(e[0], e[1].startswith("pytest-quant ahead")) for e in s.events]
    assert ran == ([("eval smollm2-135m-instruct-base", True)] if how == "xdist" else
                   [("eval smollm2-135m-instruct-base", False)])


@pytest.mark.parametrize("share, side_by_side", [(0.3, True), (0.6, False)])
def test_engines_run_side_by_side_while_their_shares_fit_the_gpu(tmp_path: Path, share: float,
                                                                 side_by_side: bool) -> None:
    """Two models asked from two threads: both engines answer at once when their shares fit in 0.9 of the card;
    otherwise the second engine starts only when the first is done (and closed to make room)."""
    python = fake_vllm(tmp_path, "slow")
    spans: dict[str, tuple[float, float]] = {}

    def ask(model: str) -> None:
        request = {"model_args": {"pretrained": model, "gpu_memory_utilization": share},
                   "runs": [{"id": "r", "samples": [1]}]}
        start = time.perf_counter()
        ENGINES.ask(python, request, "cuda", {}, 60, lambda _: None, "vllm")
        spans[model] = (start, time.perf_counter())

    try:
        threads = [threading.Thread(target=ask, args=(m,)) for m in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        (a, b) = spans.values()  # each answer takes 2 s: at once, they end together; one after the other, 2 s apart
        gap = abs(a[1] - b[1])
        assert gap < 1.0 if side_by_side else gap > 1.5, spans
        assert len(ENGINES.engines) == (2 if side_by_side else 1) and not ENGINES.busy
    finally:
        ENGINES.shutdown()
