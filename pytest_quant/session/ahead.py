"""Evaluations ahead of the tests that need them.

On a GPU, where the backend's engines are processes of their own (vLLM: ``Backend.concurrent``), a model's planned
items are evaluated in a thread as soon as the model is ready (the base model when the tests start, a checkpoint when
its build ends), beside the next build and the other engines; the test that needs them waits for that thread. The
items asked are the plan's, so each request, and each answer, is the one the first test of the model would have made
(:meth:`pytest_quant.session.evaluations.Evaluations.items`). Without pytest-xdist every planned checkpoint is built
when the tests start, so that the builds overlap the evaluations too (a worker of pytest-xdist builds only its own
cases).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, TypeVar

from pytest_quant.infra.errors import QuantError
from pytest_quant.infra.hardware import xdist_worker
from pytest_quant.infra.store import log_info

if TYPE_CHECKING:
    from pytest_quant.session.session import QuantSession, Target

T = TypeVar("T")


class Ahead(Generic[T]):
    """Work started ahead in threads, by key; its result (or its error) is taken once, by whoever needs it first."""

    def __init__(self) -> None:
        self.pending: dict[Hashable, Future[T]] = {}

    def start(self, key: Hashable, name: str, work: Callable[[], T]) -> None:
        """Run ``work`` in a daemon thread named ``name`` (an interrupted session does not wait for it: its engines
        are closed at exit, which ends it)."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as e:  # noqa: BLE001  (raised again in the test that takes it)
                future.set_exception(e)

        self.pending[key] = future
        threading.Thread(target=run, name=f"pytest-quant ahead: {name}", daemon=True).start()

    def take(self, key: Hashable) -> T | None:
        """What the work started for ``key`` gave, once it is done (its error raised here), or None if none was."""
        future = self.pending.pop(key, None)
        return None if future is None else future.result()

    def __contains__(self, key: Any) -> bool:
        return key in self.pending


def overlaps(session: QuantSession, backend: str | None = None) -> bool:
    """Whether evaluations run ahead in ``session``: --quant-ahead auto, on a GPU, with a backend (the session's, or
    ``backend``) whose engines are processes of their own."""
    return session.settings.get("ahead") == "auto" and session.compute == "cuda" \
        and session.backend_object(backend or session.backend).concurrent


def evaluate_ahead(session: QuantSession, target: Target) -> None:
    """Start evaluating ``target``'s planned items in a thread now (its model is ready), where evaluations overlap."""
    if not overlaps(session, target.backend) or target in session._ahead:
        return
    wanted = session._wanted(target)
    if wanted:
        session.path(target)  # prepared or built already: never in the thread
        session._ahead.start(target, target.label, lambda: session._evaluate(target, wanted))


def evaluate_built(session: QuantSession, key: Any) -> None:
    """A checkpoint was just built (``key``: the session's build key): the planned targets it is the checkpoint of
    start evaluating ahead, where evaluations overlap (nothing is asked of the recipes otherwise)."""
    for target in list(session.planned):
        if target.built and overlaps(session, target.backend) and session._build_key(target) == key:
            evaluate_ahead(session, target)


def start(session: QuantSession) -> None:
    """The tests begin: the planned evaluations of models that are ready start ahead, and without pytest-xdist every
    planned checkpoint is built now, each starting its own (a build that fails fails its tests later, as it would)."""
    if not session.planned:
        return
    for target in list(session.planned):
        if target.checkpoint or (target.scheme is None and not target.as_is and target.model in session._bases):
            evaluate_ahead(session, target)
    if not overlaps(session) or xdist_worker()[1] > 1:
        return
    builds = [t for t in session.planned if t.built]
    if builds:
        log_info(f"building the {len({session._build_key(t) for t in builds})} planned checkpoints now, each evaluated "
                 "as soon as it is built, beside the next build (--quant-ahead off: each when its first test asks)")
    for target in builds:
        try:
            session.build(target)
        except QuantError:
            pass  # remembered by the session (_build_errors): raised again in each test of the case
