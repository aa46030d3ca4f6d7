"""The evaluation backends, by name, as lm-eval's model registry holds its models.

Built in: ``vllm`` (evaluate/backends/vllm.py) and ``hf`` (evaluate/backends/transformers.py). Another package adds
one through the entry-point group ``pytest_quant.backends`` (name = "package.module:BackendClass", a
:class:`Backend` subclass); its name then becomes a choice of ``--quant-backend`` and of markers. ``auto`` tries
them in this order: vLLM, transformers, then the others.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from typing import Any

from pytest_quant.evaluate.backends.base import Backend
from pytest_quant.evaluate.backends.transformers import TransformersBackend
from pytest_quant.evaluate.backends.vllm import VllmBackend
from pytest_quant.infra.errors import QuantUsageError

ENTRY_POINTS = "pytest_quant.backends"
BUILT_IN: tuple[type[Backend], ...] = (VllmBackend, TransformersBackend)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    built_in = {b.name for b in BUILT_IN}
    return [e for e in importlib.metadata.entry_points(group=ENTRY_POINTS) if e.name not in built_in]


def names() -> tuple[str, ...]:
    """Every backend's name, in the order ``auto`` tries them (entry points are listed, not imported)."""
    return tuple(b.name for b in BUILT_IN) + tuple(e.name for e in _entry_points())


@lru_cache(maxsize=None)
def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``; one line listing the choices when there is none."""
    for b in BUILT_IN:
        if b.name == name:
            return b
    for e in _entry_points():
        if e.name == name:
            cls = e.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise QuantUsageError(f"entry point {e.value!r} ({ENTRY_POINTS}: {name}) is not a Backend subclass")
            return cls
    raise QuantUsageError(f"unknown evaluation backend {name!r}: use one of {', '.join(names())}")


def resolve(requested: str, settings: Any) -> tuple[Backend, str]:
    """The session's backend and why: the one asked for by name (it must be usable here), or with ``auto`` the first
    usable one in :func:`names` order (a configured vLLM interpreter must work)."""
    if requested != "auto":
        backend = get_backend(requested).from_settings(settings)
        backend.available(asked=True)
        return backend, "asked for"
    why_not = []
    for name in names():
        backend = get_backend(name).from_settings(settings)
        reason = backend.available(asked=False)
        if reason is None:
            return backend, "; ".join(why_not) or backend.chosen
        why_not.append(reason)
    raise QuantUsageError(f"no evaluation backend can run here: {'; '.join(why_not)}")


def make_backend(name: str, **options: Any) -> Backend:
    """Backend ``name`` with the options its class takes (vLLM: ``python``, ``cpu_w4a8``); others are ignored."""
    cls = get_backend(name)
    fields = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in options.items() if k in fields})
