"""Builds on several GPUs: llm-compressor's distributed oneshot, one process per GPU through torchrun.

Each rank loads the model with compressed-tensors' ``load_offloaded_model`` (rank 0 reads the weights,
the others share them), calibrates on its shard of the calibration set, and GPTQ's statistics are
synchronized across ranks. Every rank calls ``save_pretrained``: with compressed-tensors 0.19, compressing the
model is a collective that all ranks must join, and llm-compressor's save wrapper writes the files on rank 0
only (a save on rank 0 alone waits forever at a barrier). Run as ``python -m torch.distributed.run
--nproc-per-node N -m pytest_quant.build.distributed REQUEST.json``; :func:`run_distributed_build` does that without
a shell, with a timeout, and names the ranks that did not finish (each rank records its stage in a file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_quant.build.calibration import CalibrationSpec, prepare_calibration
from pytest_quant.infra.errors import QuantError
from pytest_quant.infra.exits import ended, free_gib, killed_by, rank_signals, root_cause
from pytest_quant.build.recipes import RecipeSpec, to_modifiers


def torchrun_command(gpus: int, request: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "pytest_quant.build.distributed", str(request)]


class DistributedBuildFailed(QuantError):
    """A torchrun build exited non-zero or ran past its timeout."""


def _stages(status: Path, gpus: int) -> dict[int, str]:
    """Each rank's last recorded stage ('not started' when it wrote none)."""
    return {r: (status / f"rank-{r}").read_text() if (status / f"rank-{r}").is_file() else "not started"
            for r in range(gpus)}


def _unfinished(stages: dict[int, str]) -> str:
    late = {r: s for r, s in stages.items() if s != "done"}
    return ", ".join(f"rank {r} at '{s}'" for r, s in late.items()) or "every rank finished"


def run_distributed_build(gpus: int, base_path: Path, recipe: RecipeSpec, calibration: CalibrationSpec, out: Path,
                          trust_remote_code: bool, log: Any, timeout: float = 7200.0) -> dict[str, Any]:
    """Quantize on ``gpus`` GPUs into ``out``; returns the build's timing info. A run past ``timeout`` seconds is
    killed (torchrun and every rank) and reported with the ranks that did not finish."""
    request = out.parent / f"{out.name}.request.json"
    status = Path(tempfile.mkdtemp(prefix="pytest-quant-ranks-"))
    request.write_text(json.dumps({"base": str(base_path), "recipe": recipe.as_dict(), "calibration": asdict(calibration),
                                   "out": str(out), "trust_remote_code": trust_remote_code, "status": str(status)}))
    command = torchrun_command(gpus, request)
    log(f"distributed oneshot on {gpus} GPUs (timeout {timeout:g}s): {' '.join(command)}")
    start, free_at_start = time.perf_counter(), free_gib()
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its ranks share its process group
            proc.wait()
            code = None
        finally:
            request.unlink(missing_ok=True)
        output.seek(0)
        text = output.read()
    stages = _stages(status, gpus)
    for f in status.iterdir():
        f.unlink()
    status.rmdir()
    if code is None:
        raise DistributedBuildFailed(f"distributed build on {gpus} GPUs ran past {timeout:g}s and was killed: "
                                     f"{_unfinished(stages)} (raise --quant-build-timeout if the model needs "
                                     f"longer)\nlast output:\n{text[-2000:]}")
    if code != 0:
        raise DistributedBuildFailed(f"distributed build on {gpus} GPUs failed ("
                                     f"{ended(code, free_at_start=free_at_start) if killed_by(code) else f'exit {code}'}"
                                     f"{rank_signals(text, free_at_start)}; {_unfinished(stages)}): {root_cause(text)}\n"
                                     f"last output:\n{text[-3000:]}")
    return {"gpus": gpus, "seconds": {"distributed": round(time.perf_counter() - start, 2)}}


def main(request_path: str) -> None:
    import torch.distributed as dist
    from compressed_tensors.distributed.utils import init_dist
    from compressed_tensors.offload import load_offloaded_model
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    req = json.loads(Path(request_path).read_text())
    init_dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    stage = lambda name: (Path(req["status"]) / f"rank-{rank}").write_text(name)  # noqa: E731
    stage("loading")
    recipe = RecipeSpec(**{**req["recipe"], "ignore": tuple(req["recipe"]["ignore"])})
    calibration = CalibrationSpec(**req["calibration"])
    with load_offloaded_model():
        model = AutoModelForCausalLM.from_pretrained(req["base"], dtype="auto", device_map="auto_offload",
                                                     trust_remote_code=req["trust_remote_code"])
    tokenizer = AutoTokenizer.from_pretrained(req["base"], trust_remote_code=req["trust_remote_code"])
    dataset = prepare_calibration(calibration, tokenizer).shard(num_shards=world, index=rank)
    stage("calibrating")
    oneshot(model=model, dataset=dataset, recipe=to_modifiers(recipe), max_seq_length=calibration.max_seq_length,
            num_calibration_samples=len(dataset), shuffle_calibration_samples=False)
    stage("saving")
    model.save_pretrained(req["out"], save_compressed=True)  # every rank: compression is a collective
    if rank == 0:
        tokenizer.save_pretrained(req["out"])
    dist.barrier()
    stage("done")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
