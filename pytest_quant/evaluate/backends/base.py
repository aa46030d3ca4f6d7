"""What an evaluation backend is: how it loads and asks a model, and which schemes it can run where.

The result cache (evaluate/evaluator.py) does the rest: keys, store, items. A backend instance carries its own
options (vLLM: the interpreter, the CPU W4A8 switch), read from the session's settings by :meth:`from_settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar


@dataclass(frozen=True)
class Backend:
    """One evaluation backend, registered under ``name`` (evaluate/backends/__init__.py)."""
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how messages name it ("vLLM", "transformers")
    chosen: ClassVar[str] = "available"  # why ``auto`` took it, when nothing before it was refused
    concurrent: ClassVar[bool] = False  # its models run in processes of their own: evaluations may overlap builds

    @classmethod
    def from_settings(cls, settings: Any) -> "Backend":
        """This backend with its options from the session's settings."""
        return cls()

    def available(self, asked: bool) -> str | None:
        """None when it can be used here; else why not (raising QuantEnvironmentError where ``asked`` by name, or
        where it is configured but broken)."""
        return None

    def for_device(self, store: Any, device: Any, schemes: dict[str, dict[str, Any]]) -> "Backend":
        """This backend knowing which of ``schemes`` ({name: {'group': a compressed-tensors config group, 'format'}}) it
        can run on ``device`` (infra.hardware.Device); asked once, kept in ``store`` where asking is slow."""
        return self

    def prestart(self, store: Any, device: Any) -> None:
        """On a GPU, at the session's start: begin what this backend's first answers wait for (vLLM: its support probe
        and a runner importing vLLM while the base model is prepared and the checkpoints are built)."""

    def supports(self, scheme: str | None, device: Any) -> str | None:
        """None when ``scheme`` runs on ``device`` with this backend; else one line saying why not."""
        return None

    def kernel(self, scheme: str) -> str | None:
        """The kernel this backend itself names for ``scheme`` here (vLLM: its own choice), or None."""
        return None

    def note(self, scheme: str) -> str | None:
        """What a result of ``scheme`` here must say about how it ran (vLLM: NVFP4 weight-only through Marlin on a
        GPU without FP4 compute), or None."""
        return None

    def model_args(self, path: Path, device: str, gpus: int, engine: dict[str, Any]) -> dict[str, Any]:
        """lm-eval model arguments (``engine``: a YAML config's fields, this backend's own taken out of it)."""
        raise NotImplementedError

    def check(self, path: Path, gpus: int) -> None:
        """Refuse, before a model loads, what this backend cannot run."""

    def versions(self) -> dict[str, str]:
        """The library versions that compute its results (part of every result's key)."""
        raise NotImplementedError

    def env(self, device: str, env_vars: dict[str, str]) -> dict[str, str]:
        """The environment the model runs in."""
        return dict(os.environ)

    def numerics(self, env: dict[str, str]) -> dict[str, Any]:
        """Settings of ``env`` that choose numerical code paths (part of the key)."""
        return {}

    def answer(self, request: dict[str, Any], env: dict[str, str], device: str, timeout: float,
               log: Callable[[str], None]) -> dict[str, Any]:
        """lm_runner's response to ``request``, with the kernels the backend logged."""
        raise NotImplementedError
