"""Builds on several GPUs: llm-compressor's distributed oneshot, one process per GPU through torchrun.

Each rank loads the model with compressed-tensors' ``load_offloaded_model`` (rank 0 reads the weights,
the others share them), calibrates on its shard of the calibration set, and GPTQ's statistics are
synchronized across ranks; rank 0 saves. Run as ``python -m torch.distributed.run --nproc-per-node N
-m pytest_quant.distributed REQUEST.json``; :func:`run_distributed_build` does that without a shell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .calibration import CalibrationSpec, prepare_calibration
from .errors import QuantError
from .recipes import RecipeSpec, to_modifiers


def torchrun_command(gpus: int, request: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "pytest_quant.distributed", str(request)]


def run_distributed_build(gpus: int, base_path: Path, recipe: RecipeSpec, calibration: CalibrationSpec, out: Path,
                          trust_remote_code: bool, log: Any) -> dict[str, Any]:
    """Quantize on ``gpus`` GPUs into ``out``; returns the build's timing info."""
    request = out.parent / f"{out.name}.request.json"
    request.write_text(json.dumps({"base": str(base_path), "recipe": recipe.as_dict(), "calibration": asdict(calibration),
                                   "out": str(out), "trust_remote_code": trust_remote_code}))
    log(f"distributed oneshot on {gpus} GPUs: {' '.join(torchrun_command(gpus, request))}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(torchrun_command(gpus, request), capture_output=True, text=True)
    finally:
        request.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise QuantError(f"distributed build on {gpus} GPUs failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
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
    recipe = RecipeSpec(**{**req["recipe"], "ignore": tuple(req["recipe"]["ignore"])})
    calibration = CalibrationSpec(**req["calibration"])
    with load_offloaded_model():
        model = AutoModelForCausalLM.from_pretrained(req["base"], dtype="auto", device_map="auto_offload",
                                                     trust_remote_code=req["trust_remote_code"])
    tokenizer = AutoTokenizer.from_pretrained(req["base"], trust_remote_code=req["trust_remote_code"])
    dataset = prepare_calibration(calibration, tokenizer).shard(num_shards=world, index=rank)
    oneshot(model=model, dataset=dataset, recipe=to_modifiers(recipe), max_seq_length=calibration.max_seq_length,
            num_calibration_samples=len(dataset), shuffle_calibration_samples=False)
    if rank == 0:
        model.save_pretrained(req["out"], save_compressed=True)
        tokenizer.save_pretrained(req["out"])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
