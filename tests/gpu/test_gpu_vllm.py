"""vLLM on a GPU through the plugin: the engine pool's memory rule (run on the lent H100 by scripts/gpu/device.sh).

The rule (pytest_quant/evaluate/backends/vllm_memory.py): each engine asks for the share of the card its model needs,
so the base and the quantized engine of a gate stay alive side by side in a few GiB (SmolLM2-135M: under 16 GiB for
both, not 90% of the card); in-process GPU work (a build) closes them first.
"""

from __future__ import annotations

import subprocess

import pytest

from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.evaluate.engine_pool import ENGINES
from pytest_quant.session.settings import Settings
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.session.session import Case, QuantSession, Target

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and the vLLM environment")]
MODEL = "smollm2-135m-instruct"
SMALL_MODEL_MIB = 16 * 1024  # two 135M engines side by side (issue 33's goal for the whole suite)


def used_mib() -> tuple[int, int]:
    """(memory used, memory total) of GPU 0 in MiB, as nvidia-smi reports it (every process counted)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True, timeout=30, check=True).stdout
    used, total = (int(x) for x in out.split(","))
    return used, total


@pytest.fixture(scope="module")
def session(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> QuantSession:
    """A session on an empty store of its own: results of an earlier run (the shipped suite's) would be served from
    the store and start no engine."""
    store = tmp_path_factory.mktemp("gpu-engines-store")
    settings = Settings(cli={"profile": "guide", "group_size": "auto", "backend": "vllm", "vllm_python": vllm_python,
                             "limit": 20, "cache_dir": str(store)})
    return QuantSession(settings, store)


def test_base_and_quantized_engines_are_alive_together_within_the_budget(session: QuantSession) -> None:
    case = Case(MODEL, "W4A16")
    session.checkpoint(case)
    run = session.run("quant_facts")
    ids = session.order("quant_facts")[:20]
    base = session.items(Target(MODEL), run, ids)
    quantized = session.items(Target.of(case), run, ids)
    used, total = used_mib()
    assert len(ENGINES.engines) == 2, f"expected the base and the quantized engine alive, found {len(ENGINES.engines)}"
    assert used <= SMALL_MODEL_MIB, f"{used} MiB used of {total} MiB with two engines of a 135M model"
    assert quantized.engine["gpu_memory_utilization"] < 0.2 and quantized.engine["kv_cache_gib"] > 0, quantized.engine
    assert any("Marlin" in k or "Machete" in k for k in quantized.kernels), quantized.kernels
    assert len(base.items) == len(quantized.items) == 20


def test_a_build_in_the_process_closes_the_engines_and_an_engine_starts_after_it(session: QuantSession) -> None:
    assert ENGINES.engines, "the previous test leaves two engines alive"
    target = Target(MODEL, "W8A8", recipe=RecipeSpec("W8A8", smoothing_strength=0.8),
                    calibration=CalibrationSpec("bundled", 16, 128, 4))
    ck = session.build(target)
    assert not ENGINES.engines, "a build on the GPU must close the vLLM engines first"
    run = session.run("quant_facts")
    result = session.items(target, run, session.order("quant_facts")[:20])
    used, total = used_mib()
    assert used <= SMALL_MODEL_MIB, f"{used} MiB used of {total} MiB"
    assert any("ScaledMM" in k for k in result.kernels), result.kernels
    assert ck.path.is_dir()
