"""vLLM's support probe as a process (evaluate/backends/vllm_probe.py), with a stand-in interpreter: started early
it is the one asked, its schemes come on stdin, and its failure names its own root cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pytest_quant.evaluate.backends import vllm_probe
from pytest_quant.infra.errors import QuantEnvironmentError

# Stands in for the vLLM interpreter: answers each scheme read on stdin with its own pid and the request of argv.
FAKE = """#!{python}
import json, os, sys
req, schemes = json.loads(sys.argv[-1]), json.loads(sys.stdin.read())
if "BOOM" in schemes:
    print("Traceback (most recent call last):\\nRuntimeError: no kernel for BOOM", file=sys.stderr)
    sys.exit(1)
print(json.dumps({{name: {{"kernel": "K", "pid": os.getpid(), "capability": req["capability"]}} for name in schemes}}))
"""


@pytest.fixture
def fake(tmp_path: Path) -> str:
    path = tmp_path / "python"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    yield str(path)
    vllm_probe.probe_schemes.cache_clear()
    vllm_probe._EARLY.clear()


def test_a_probe_started_early_is_the_one_asked(fake: str) -> None:
    vllm_probe.prestart_probe(fake, 90)
    early = vllm_probe._EARLY[(fake, 90, "bfloat16")]
    answer = vllm_probe.probe_schemes(fake, 90, json.dumps({"W4A16": {}, "W8A8": {}}))
    assert answer["W4A16"] == {"kernel": "K", "pid": early.pid, "capability": 90}
    assert set(answer) == {"W4A16", "W8A8"}
    assert (fake, 90, "bfloat16") not in vllm_probe._EARLY  # taken: a second question starts its own
    again = vllm_probe.probe_schemes(fake, 90, json.dumps({"FP8": {}}))
    assert again["FP8"]["pid"] != early.pid


def test_an_early_probe_of_another_capability_is_not_asked(fake: str) -> None:
    vllm_probe.prestart_probe(fake, 90)
    early = vllm_probe._EARLY[(fake, 90, "bfloat16")]
    answer = vllm_probe.probe_schemes(fake, 100, json.dumps({"NVFP4": {}}))
    assert answer["NVFP4"]["capability"] == 100 and answer["NVFP4"]["pid"] != early.pid


def test_a_failed_probe_names_its_root_cause(fake: str) -> None:
    vllm_probe.prestart_probe(fake, 90)
    with pytest.raises(QuantEnvironmentError, match="RuntimeError: no kernel for BOOM"):
        vllm_probe.probe_schemes(fake, 90, json.dumps({"BOOM": {}}))
