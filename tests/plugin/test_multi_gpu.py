"""Options for models larger than one GPU become engine arguments (no GPUs needed for these checks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_quant.build.distributed import torchrun_command
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.evaluate.backends import make_backend
from pytest_quant.evaluate.evaluator import model_args
from pytest_quant.infra.hardware import Device, requirement_reason
from pytest_quant.session.settings import Settings
from pytest_quant.plugin.yaml_configs import parse_config

from .test_plugin import fake_subprocess


def test_build_gpus_become_a_torchrun_of_llmcompressor_distributed_oneshot() -> None:
    cmd = torchrun_command(4, Path("/tmp/req.json"))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--standalone" in cmd
    assert cmd[-3:] == ["-m", "pytest_quant.build.distributed", "/tmp/req.json"]


def test_eval_gpus_become_tensor_parallel_or_parallelize() -> None:
    assert model_args(make_backend("vllm"), Path("m"), "cuda", 4, False)["tensor_parallel_size"] == 4
    assert "tensor_parallel_size" not in model_args(make_backend("vllm"), Path("m"), "cuda", 1, False)
    assert model_args(make_backend("hf"), Path("m"), "cuda", 2, False)["parallelize"] is True
    assert "parallelize" not in model_args(make_backend("hf"), Path("m"), "cuda", 1, False)


def test_gpu_options_resolve_like_every_other(quant_env: pytest.MonkeyPatch) -> None:
    assert Settings().get("eval_gpus", {"eval_gpus": 4}) == 4
    assert Settings().get("eval_gpus") == 1
    quant_env.setenv("QUANT_EVAL_GPUS", "2")
    quant_env.setenv("QUANT_BUILD_GPUS", "4")
    s = Settings(cli={"build_gpus": "8"})
    assert (s.get("build_gpus"), s.get("eval_gpus")) == (8, 2)


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
    assert requirement_reason(one, gpus=2) == "needs 2 GPUs, found 1 x NVIDIA H200 (capability 9.0, 139 GiB)"
    assert requirement_reason(eight, gpus=2, gpu_memory_gib=100) is None
    assert "needs a GPU with 160 GiB" in requirement_reason(eight, gpu_memory_gib=160)


def test_zero_gpus_is_refused() -> None:
    from pytest_quant.build.checkpoint import build_checkpoint
    from pytest_quant.build.calibration import CalibrationSpec
    from pytest_quant.build.recipes import RecipeSpec
    from pytest_quant.infra.store import Store

    with pytest.raises(QuantUsageError, match="at least 1, got 0"):
        build_checkpoint("smollm2-135m-instruct", RecipeSpec(), CalibrationSpec(), Store("/nonexistent"), gpus=0)


def test_checkpoint_tests_skip_when_the_machine_has_too_few_gpus(pytester: pytest.Pytester) -> None:
    fake = fake_subprocess(pytester)
    pytester.makepyfile(test_big="""
        import pytest
        def test_ck(quantized_checkpoint):
            pass
        @pytest.mark.quant_requires(gpus=2, gpu_memory_gib=80)
        def test_tp():
            pass
    """)
    r = pytester.runpytest_subprocess(*fake, "--quant-scheme", "W4A16", "--quant-eval-gpus", "2", "-rs")
    r.assert_outcomes(skipped=2)
    assert "needs 2 GPUs, found CPU only" in r.stdout.str()


def test_a_hanging_torchrun_is_killed_at_the_timeout_and_the_unfinished_rank_is_named(tmp_path: Path, monkeypatch) -> None:
    """What a save on rank 0 alone did (issue 20): rank 1 finished, rank 0 waited forever. Simulated ranks,
    no GPU: each records its stage as the real ranks do; rank 0 then hangs."""
    from pytest_quant import distributed
    from pytest_quant.build.calibration import CalibrationSpec
    from pytest_quant.build.recipes import RecipeSpec

    fake = tmp_path / "fake_torchrun.py"
    fake.write_text(
        "import json, sys, time, subprocess\n"
        "from pathlib import Path\n"
        "status = Path(json.loads(Path(sys.argv[1]).read_text())['status'])\n"
        "(status / 'rank-1').write_text('done')\n"
        "(status / 'rank-0').write_text('saving')\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])  # a rank process of its own\n"
        "time.sleep(600)\n")
    monkeypatch.setattr(distributed, "torchrun_command", lambda gpus, request: [sys.executable, str(fake), str(request)])
    start = __import__("time").perf_counter()
    with pytest.raises(distributed.DistributedBuildFailed, match=r"ran past 3s and was killed: rank 0 at 'saving'"):
        distributed.run_distributed_build(2, tmp_path, RecipeSpec(), CalibrationSpec(), tmp_path / "out", False,
                                          lambda m: None, timeout=3)
    assert __import__("time").perf_counter() - start < 30


def test_a_failed_torchrun_names_the_ranks_that_did_not_finish(tmp_path: Path, monkeypatch) -> None:
    from pytest_quant import distributed
    from pytest_quant.build.calibration import CalibrationSpec
    from pytest_quant.build.recipes import RecipeSpec

    fake = tmp_path / "fake_torchrun.py"
    fake.write_text("import sys; print('CUDA error: out of memory', file=sys.stderr); sys.exit(1)\n")
    monkeypatch.setattr(distributed, "torchrun_command", lambda gpus, request: [sys.executable, str(fake), str(request)])
    with pytest.raises(distributed.DistributedBuildFailed,
                       match=r"failed \(exit 1; rank 0 at 'not started', rank 1 at 'not started'\)(.|\n)*out of memory"):
        distributed.run_distributed_build(2, tmp_path, RecipeSpec(), CalibrationSpec(), tmp_path / "out", False,
                                          lambda m: None, timeout=60)


@pytest.mark.parametrize("worker, workers, gpus, expected", [
    (0, 2, ["0", "1"], ["0"]), (1, 2, ["0", "1"], ["1"]),  # one GPU per worker
    (1, 2, ["0", "1", "2", "3"], ["2", "3"]),  # a group of two: a 2-GPU build or tensor-parallel engine
    (2, 3, ["0", "1"], ["0"]),  # fewer GPUs than workers: shared round-robin
    (0, 2, [], []),  # no GPU: nothing set
])
def test_xdist_workers_get_their_own_gpus(worker: int, workers: int, gpus: list, expected: list) -> None:
    from pytest_quant.infra.hardware import worker_gpus

    assert worker_gpus(worker, workers, gpus) == expected


def test_each_xdist_worker_sees_only_its_gpus_unless_the_user_chose(monkeypatch) -> None:
    """A simulated 2-GPU host (no CUDA here): the plugin sets each worker's CUDA_VISIBLE_DEVICES to its own GPU,
    and leaves a CUDA_VISIBLE_DEVICES the user set alone."""
    from types import SimpleNamespace

    from pytest_quant.plugin import xdist_compat

    monkeypatch.setattr(xdist_compat, "visible_gpus", lambda: ["0", "1"])
    seen = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        xdist_compat.assign_worker_gpus(SimpleNamespace(workerinput={"workerid": worker, "workercount": 2}))
        seen[worker] = os.environ["CUDA_VISIBLE_DEVICES"]
    assert seen == {"gw0": "0", "gw1": "1"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    xdist_compat.assign_worker_gpus(SimpleNamespace(workerinput={"workerid": "gw0", "workercount": 2}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    xdist_compat.assign_worker_gpus(SimpleNamespace())  # not an xdist worker: nothing set
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_tensor_parallel_that_does_not_divide_the_heads_is_a_usage_error(tmp_path: Path) -> None:
    """Found on two H200s: vLLM refused tensor_parallel_size=2 for SmolLM2-135M (9 attention heads) after the
    engine had started; the plugin says so before any engine starts."""
    from pytest_quant.evaluate.backends.vllm import check_tensor_parallel

    (tmp_path / "config.json").write_text('{"num_attention_heads": 9}')
    with pytest.raises(QuantUsageError, match=r"--quant-eval-gpus 2: .* 9 attention heads .* use one of \[1, 3, 9\]"):
        check_tensor_parallel(tmp_path, 2)
    check_tensor_parallel(tmp_path, 3)
