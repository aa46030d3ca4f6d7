"""Upstream-shaped YAML configs (fixtures/) run unchanged on the real pipeline (vLLM's CPU build).

Only what a CI machine cannot do is set on the command line: the bundled calibration set instead of the
hub's, the CI profile's calibration size, and a group size SmolLM2's 576 columns can take.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_quant.infra.store import Store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
OFFLINE = ["--quant-calibration", "bundled", "--quant-num-samples", "32", "--quant-max-seq-length", "256",
           "--quant-group-size", "auto"]


def run_config(pytester: pytest.Pytester, name: str, store: Path, vllm_python: str, *args: str
               ) -> tuple[pytest.RunResult, dict]:
    shutil.copy(FIXTURES / name, pytester.path / name)
    r = pytester.runpytest_subprocess(name, "--quant-backend", "auto", "--quant-vllm-python", vllm_python,
                                      "--quant-cache-dir", str(store), "--quant-profile", "ci",
                                      "--quant-report", "report.json", "-p", "no:randomly", "-rA", *args)
    return r, json.loads((pytester.path / "report.json").read_text())


@pytest.mark.slow
def test_vllm_format_config_passes_with_its_stored_values(pytester: pytest.Pytester, store: Store,
                                                         vllm_python: str) -> None:
    r, report = run_config(pytester, "quant_vllm_format.yaml", store.root, vllm_python)
    r.assert_outcomes(passed=3)
    assert {(g["task"], g["metric"], g["n"]) for g in report["gates"]} == {
        ("quant_arith", "exact_match,strict-match", 100), ("quant_arith", "exact_match,flexible-extract", 100),
        ("quant_facts", "acc", 100)}


@pytest.mark.slow
def test_a_config_with_several_tasks_loads_the_model_once(pytester: pytest.Pytester, tmp_path: Path,
                                                          vllm_python: str) -> None:
    r, report = run_config(pytester, "quant_vllm_format.yaml", tmp_path / "fresh-store", vllm_python,
                           "--quant-limit", "10", "-o", "log_cli=true", "--log-cli-level=INFO",
                           "--show-capture=no")
    assert len(report["gates"]) == 3
    assert r.stdout.str().count("vLLM evaluation took") == 1, r.stdout.str()[-3000:]


@pytest.mark.slow  # 754 s here, where transformers evaluates W4A16 (no vLLM kernel on AVX2)
def test_llmcompressor_w4a16_config_finds_the_arithmetic_regression(pytester: pytest.Pytester, store: Store,
                                                                    vllm_python: str) -> None:
    r, report = run_config(pytester, "quant_llmcompressor_w4a16_gptq.yaml", store.root, vllm_python, *OFFLINE,
                           "--quant-limit", "60", "-W", "default")
    assert {g["metric"] for g in report["gates"]} == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(g["verdict"] == "FAIL" for g in report["gates"]), [g["message"] for g in report["gates"]]
    assert "a warning, not a failure, as in llm-compressor" in r.stdout.str()
    r.assert_outcomes(failed=2)


@pytest.mark.slow
def test_llmcompressor_w8a8_config_passes(pytester: pytest.Pytester, store: Store, vllm_python: str) -> None:
    r, report = run_config(pytester, "quant_llmcompressor_w8a8.yaml", store.root, vllm_python, *OFFLINE)
    assert {g["metric"]: g["verdict"] for g in report["gates"]} == {"acc": "PASS", "acc_norm": "PASS"}, \
        [g["message"] for g in report["gates"]]
    r.assert_outcomes(passed=2)
