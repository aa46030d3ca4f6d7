"""vLLM's own answer, per scheme users ship, for a CUDA capability (argv[1]; none: this machine's platform): which
compressed-tensors scheme and kernel it picks, or why it cannot (pytest_quant's probe, as a session asks it)."""

import json
import os
import sys

from pytest_quant.build.schemes import COMMON, get_scheme
from pytest_quant.evaluate.backends.vllm_probe import probe_schemes

capability = int(sys.argv[1]) if len(sys.argv) > 1 else None
asked = {}
for name in COMMON:
    scheme = get_scheme(name)
    if scheme.group_size and not scheme.group_fixed:
        scheme = scheme.with_group(64)  # the bundled model's 576 columns
    asked[name] = {"group": scheme.config_group(), "format": scheme.format}
python = os.environ.get("QUANT_VLLM_PYTHON", "/tmp/vllm-python")
print(json.dumps(probe_schemes(python, capability, json.dumps(asked, sort_keys=True)), indent=1))
