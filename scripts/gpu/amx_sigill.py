"""Minimal reproduction, outside pytest, of vLLM's CPU build dying with SIGILL under ONEDNN_MAX_CPU_ISA (issue 30).

Linux lets a process execute AMX tile instructions only after it asked for the permission
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``); without it the first tile instruction raises SIGILL.
This script shows who asks for it in a vLLM CPU process and which configurations leave it unasked.

  python amx_sigill.py build OUT            # quantization environment: the bundled model and its W4A16 (RTN, group 64)
  VLLM_PY amx_sigill.py probe OUT           # vLLM CPU environment: one child per configuration, a table
  VLLM_PY amx_sigill.py child MODEL [--init-amx]  # one generation; prints the permission before and after

Each child runs ``vllm.LLM(...).generate`` on four prompts in its own process, so a SIGILL kills only the child.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ARCH_GET_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1022, 18, 158


def amx_permitted() -> bool:
    """Whether this process may execute AMX tile instructions (Linux's per-process XTILEDATA permission)."""
    bits = ctypes.c_ulong(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(bits)) != 0:
        return False
    return bool(bits.value & (1 << XFEATURE_XTILEDATA))


def build(out: Path) -> None:
    """The bundled model as a transformers checkpoint and its data-free W4A16 (RTN, group 64) next to it."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quant.build.models import materialize, resolve_model
    from pytest_quant.infra.store import Store

    base, _ = materialize(resolve_model("smollm2-135m-instruct"), Store(out / "store"))
    model = AutoModelForCausalLM.from_pretrained(base, dtype="bfloat16")
    recipe = QuantizationModifier(targets="Linear", ignore=["lm_head"], config_groups={"group_0": {
        "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                           "group_size": 64}}})
    oneshot(model=model, recipe=[recipe])
    model.save_pretrained(out / "w4a16", save_compressed=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out / "w4a16")
    (out / "base").unlink(missing_ok=True)
    (out / "base").symlink_to(base)
    print(f"[amx] built {out / 'w4a16'} from {base}")


def child(model: str, init_amx: bool) -> None:
    """One vLLM CPU engine in this process: the permission before, after the engine start, after generating."""
    import torch

    before = amx_permitted()
    if init_amx:
        torch.cpu._init_amx()  # what pytest-quant's vLLM runner does first on an AMX CPU
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.5)
    started = amx_permitted()
    out = llm.generate(["The capital of France is"] * 4, SamplingParams(max_tokens=8, temperature=0.0))
    print("[amx-child] " + json.dumps({"before": before, "after_start": started, "after_generate": amx_permitted(),
                                       "answer": out[0].outputs[0].text}), flush=True)
    os._exit(0)  # vLLM's teardown at exit can abort after the work is done


CONFIGS = [  # (name, environment, request the permission first)
    ("plain", {}, False),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, False),
    ("ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, False),
    ("ONEDNN_MAX_CPU_ISA=AVX512_CORE", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),
    ("both (CI's emulated step)", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, False),
    ("both + torch.cpu._init_amx()", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, True),
]


def probe(out: Path) -> None:
    """Each configuration on the base model and the W4A16 checkpoint: how the child ended, and the permission."""
    env0 = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_INT4_W4A8": "0", "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("AMX_BIND", "0,1"),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    print(f"[amx] this process (no library loaded): AMX permitted={amx_permitted()}")
    for model in ("base", "w4a16"):
        for name, extra, init in CONFIGS if model == "w4a16" else CONFIGS[:1] + CONFIGS[4:5]:
            start = time.perf_counter()
            cmd = [sys.executable, __file__, "child", str(out / model)] + (["--init-amx"] if init else [])
            p = subprocess.run(cmd, env={**env0, **extra}, capture_output=True, text=True, timeout=300)
            ended = f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"exit {p.returncode}"
            said = [line[len("[amx-child] "):] for line in p.stdout.splitlines() if line.startswith("[amx-child] ")]
            kernels = sorted({w for w in (p.stdout + p.stderr).split() if w.endswith("LinearKernel")})
            print(f"[amx] {model:6s} {name:32s} {ended:20s} {time.perf_counter() - start:5.1f}s "
                  f"{said[0] if said else (p.stderr or p.stdout).strip().splitlines()[-1:]} {kernels}", flush=True)


if __name__ == "__main__":
    verb, where = sys.argv[1], sys.argv[2]
    if verb == "build":
        build(Path(where))
    elif verb == "probe":
        probe(Path(where))
    else:
        child(where, "--init-amx" in sys.argv)
