"""The vLLM runners of a session (evaluate/engine.py): kept alive between requests, as many as fit, shared by the
threads of evaluations started ahead (session/ahead.py), with a spare runner importing vLLM on a GPU."""

from __future__ import annotations

import atexit
import threading
import time
from typing import Any, Callable

from pytest_quant.evaluate.engine import Engine, identity, same_runner
from pytest_quant.infra.files import digest


# At most this many idle engines stay alive per pytest process: a gate pairs a base and a quantized model, and a
# session's next model should not wait for the one before the last to close. On a GPU each engine asks only the share
# of the card its model needs (backends/vllm_memory.py), so they fit side by side.
KEEP_ENGINES = 2
# Shares of the GPU the live engines may ask for together (vLLM's own default for one engine)
GPU_SHARE = 0.9


class EnginePool:
    """Live vLLM runners by (interpreter, model arguments, environment): a model loads once per session.

    Thread-safe: a session's evaluations started ahead (session/ahead.py) ask it from threads of their own, each on
    its own engine, at the same time; an engine answers one request at a time (a second asker of the same model waits
    for it). At most ``KEEP_ENGINES`` idle engines stay alive (the least recently used one is closed), and on a GPU
    the live engines' shares of the card stay within ``GPU_SHARE`` (a new engine waits for busy ones). On a GPU a
    spare runner is started beside each new engine: it imports vLLM and lm-eval while the session builds or
    evaluates, and the next model loads in it.
    """

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}  # idle, least recently used first
        self.busy: dict[str, Engine] = {}
        self.spare: Engine | None = None
        self._lock = threading.Condition()

    def ask(self, python: str, request: dict[str, Any], device: str, env: dict[str, str], timeout: float,
            log: Callable[[str], None], backend: str) -> dict[str, Any]:
        """Answer ``request`` on a live engine of this interpreter, model arguments and environment ``env``
        (``backend``: the name a failure's line gives the configuration)."""
        key = digest([python, request["model_args"], {k: v for k, v in env.items() if k.startswith("VLLM_")}])
        engine = self._checkout(key, python, request, device, env, backend)
        start = time.perf_counter()
        try:
            response = engine.ask(request, timeout, log)
        except BaseException:
            engine.close()
            self._checkin(key, None)
            raise
        self._checkin(key, engine)
        load = f"model load {response['load_seconds']}s" if engine.requests == 1 else "model already loaded"
        log(f"vLLM evaluation took {time.perf_counter() - start:.1f}s ({load}); "
            f"kernels: {', '.join(response['kernels']) or 'none reported'}; numerics: "
            + ", ".join(f"{k} {v}" for k, v in response.get("numerics", {}).items())
            + "".join(f"; vLLM on the KV cache: {line[-200:]}" for line in response.get("kv_cache", [])))
        return response

    def _checkout(self, key: str, python: str, request: dict[str, Any], device: str, env: dict[str, str],
                  backend: str) -> Engine:
        """The engine of ``key``, marked busy: the idle one (once another asker is done with it), or a new one once
        the GPU has room for its share beside the busy ones (idle ones are closed for it first)."""
        share = float(request["model_args"].get("gpu_memory_utilization", 0)) if device != "cpu" else 0.0
        with self._lock:
            while True:
                if key in self.busy:
                    self._lock.wait()
                    continue
                engine = self.engines.pop(key, None)
                if engine is not None:
                    break
                while self.engines and (len(self.engines) >= KEEP_ENGINES or not self._fits(share)):
                    self.engines.pop(next(iter(self.engines))).close()
                if not self._fits(share):
                    self._lock.wait()  # busy engines hold the card: the first to finish makes room
                    continue
                engine = self._take_spare(python, env, backend)
                engine.share = share
                if device != "cpu":
                    self.spare = Engine(python, env, backend)
                break
            self.busy[key] = engine
            return engine

    def _fits(self, share: float) -> bool:
        """Whether an engine asking ``share`` of the GPU fits beside the live ones (or the card is empty of them)."""
        held = sum(e.share for e in [*self.engines.values(), *self.busy.values()])
        return held == 0 or held + share <= GPU_SHARE

    def _checkin(self, key: str, engine: Engine | None) -> None:
        """``key``'s engine is idle again (most recently used last), or gone (None)."""
        with self._lock:
            self.busy.pop(key, None)
            if engine is not None:
                self.engines[key] = engine
            self._lock.notify_all()

    def prestart(self, python: str, env: dict[str, str], backend: str) -> None:
        """Start a spare runner now (on a GPU, when the session starts): the first model loads in it."""
        with self._lock:
            if self.spare is None:
                self.spare = Engine(python, env, backend)

    def _take_spare(self, python: str, env: dict[str, str], backend: str) -> Engine:
        """The spare runner when it was started with this interpreter and environment, else a new runner."""
        spare, self.spare = self.spare, None
        if spare is not None and same_runner(spare.started_as, identity(python, env, backend)) \
                and spare.proc.poll() is None:
            return spare
        if spare is not None:
            spare.close()
        return Engine(python, env, backend)

    def close(self) -> None:
        """Close the idle engines holding models; busy ones finish their request, and a spare runner (it holds no
        GPU memory) stays."""
        with self._lock:
            while self.engines:
                self.engines.pop(next(iter(self.engines))).close()

    def shutdown(self) -> None:
        """Close every runner, busy ones too (their askers get the runner's end as an error)."""
        self.close()
        with self._lock:
            for engine in [*self.busy.values(), *([self.spare] if self.spare else [])]:
                engine.close()
            self.spare = None


ENGINES = EnginePool()
atexit.register(ENGINES.shutdown)
