"""Options for models larger than one GPU become engine arguments (no GPUs needed for these checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_quant.distributed import torchrun_command
from pytest_quant.errors import QuantUsageError
from pytest_quant.evaluate import model_args
from pytest_quant.hardware import Device, skip_reason
from pytest_quant.options import Settings
from pytest_quant.yaml_items import parse_config

from .test_plugin import FAKE


def test_build_gpus_become_a_torchrun_of_llmcompressor_distributed_oneshot() -> None:
    cmd = torchrun_command(4, Path("/tmp/req.json"))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--standalone" in cmd
    assert cmd[-3:] == ["-m", "pytest_quant.distributed", "/tmp/req.json"]


def test_eval_gpus_become_tensor_parallel_or_parallelize() -> None:
    assert model_args("vllm", Path("m"), "cuda", 4, False)["tensor_parallel_size"] == 4
    assert "tensor_parallel_size" not in model_args("vllm", Path("m"), "cuda", 1, False)
    assert model_args("hf", Path("m"), "cuda", 2, False)["parallelize"] is True
    assert "parallelize" not in model_args("hf", Path("m"), "cuda", 1, False)


def test_gpu_options_resolve_like_every_other() -> None:
    s = Settings(cli={"build_gpus": "8"}, env={"QUANT_EVAL_GPUS": "2", "QUANT_BUILD_GPUS": "4"})
    assert (s.get("build_gpus"), s.get("eval_gpus")) == (8, 2)
    assert Settings(env={}).get("eval_gpus", {"eval_gpus": 4}) == 4
    assert Settings(env={}).get("eval_gpus") == 1


def test_yaml_gpu_fields() -> None:
    v = parse_config({"model_name": "m", "tensor_parallel_size": 4, "limit": 10, "num_fewshot": 0,
                      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": 0.5}]}]})
    assert v.tensor_parallel_size == 4
    c = parse_config({"model": "m", "scheme": "W4A16", "num_gpus": 2, "build_gpus": 4, "lmeval": {"task": "quant_facts"}})
    assert (c.num_gpus, c.build_gpus, c.eval_gpus) == (2, 4, None)
    with pytest.raises(QuantUsageError, match="build_gpus: Input should be a valid integer"):
        parse_config({"model": "m", "scheme": "W4A16", "build_gpus": "two", "lmeval": {"task": "quant_facts"}})


def test_gpu_count_and_memory_skips() -> None:
    one = Device("cuda", "NVIDIA H200", 90, 1, 139)
    eight = Device("cuda", "NVIDIA H200", 90, 8, 139)
    assert skip_reason(None, one, "vllm", gpus=2) == "needs 2 GPUs, found 1 x NVIDIA H200 (capability 9.0, 139 GiB)"
    assert skip_reason(None, eight, "vllm", gpus=2, gpu_memory_gib=100) is None
    assert "needs a GPU with 160 GiB" in skip_reason(None, eight, "vllm", gpu_memory_gib=160)


def test_zero_gpus_is_refused() -> None:
    from pytest_quant.build import build_checkpoint
    from pytest_quant.calibration import CalibrationSpec
    from pytest_quant.recipes import RecipeSpec
    from pytest_quant.store import Store

    with pytest.raises(QuantUsageError, match="at least 1, got 0"):
        build_checkpoint("smollm2-135m-instruct", RecipeSpec(), CalibrationSpec(), Store("/nonexistent"), gpus=0)


def test_checkpoint_tests_skip_when_the_machine_has_too_few_gpus(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE)
    pytester.makepyfile(test_big="""
        import pytest
        def test_ck(quantized_checkpoint):
            pass
        @pytest.mark.quant_requires(gpus=2, gpu_memory_gib=80)
        def test_tp():
            pass
    """)
    r = pytester.runpytest_subprocess("--quant-scheme", "W4A16", "--quant-eval-gpus", "2", "-rs")
    r.assert_outcomes(skipped=2)
    assert "needs 2 GPUs, found CPU only" in r.stdout.str()
