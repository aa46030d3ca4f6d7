"""The plugin through pytester: options, parametrization, markers, skips, reports, baselines, YAML.

Builds and evaluations are replaced by canned results here (FAKE below) so that these tests check the
plugin's own logic in seconds; tests/test_e2e_*.py run the real pipeline.
"""

from __future__ import annotations

import json

import pytest

from pytest_quant.options import OPTIONS

FAKE = """
import json, os
from pathlib import Path
from pytest_quant.build import Checkpoint
from pytest_quant.evaluate import RunResult
from pytest_quant.hardware import Device
from pytest_quant.models import resolve_model
from pytest_quant.recipes import RecipeSpec
from pytest_quant.session import QuantSession

VALUES = json.loads(os.environ.get("FAKE_VALUES", '{"base": 0.70, "W4A16": 0.66, "W8A8": 0.50}'))

def checkpoint(self, model, scheme):
    return Checkpoint(Path("/nonexistent"), Path("/nonexistent"), resolve_model(model), RecipeSpec(scheme),
                      {"key": "k-" + scheme, "seconds": 1.5}, True)

def evaluate(self, target, runs, checkpoint=None):
    v = VALUES[target.scheme or "base"]
    drop = VALUES.get("bos_drop_" + (target.scheme or "base"), 0.02)
    return {r: RunResult({"acc": {"value": v if r.add_bos_token else v - drop, "stderr": 0.01}}, 100,
                         {"1": 100} if r.add_bos_token else {"0": 100}, "hf", 0.5, versions={"lm_eval": "x"})
            for r in runs}

QuantSession.checkpoint = checkpoint
QuantSession.evaluate = evaluate
QuantSession.backend = property(lambda self: os.environ.get("FAKE_BACKEND", "hf"))
QuantSession.backend_reason = property(lambda self: "fake")
QuantSession.device = property(lambda self: Device("cpu", "x86_64"))  # the same skips on any test machine
"""

GATED = """
import pytest

@pytest.mark.quant_accuracy(task="quant_facts", metric="acc", recovery=0.9)
def test_accuracy(quantized_checkpoint):
    pass

@pytest.mark.quant_bos(task="quant_facts", metric="acc", max_extra_loss=0.05)
def test_bos(quantized_checkpoint):
    pass
"""


@pytest.fixture
def fake(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE)
    return pytester


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "no:randomly", *args)


def test_every_option_is_on_the_command_line(pytester: pytest.Pytester) -> None:
    out = pytester.runpytest_subprocess("--help").stdout.str()
    for o in OPTIONS:
        assert o.cli in out, o.cli
        assert o.env in out, o.env


def test_parametrized_per_model_and_scheme_with_readable_ids(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_ids="""
        def test_ck(quantized_checkpoint, quant_scheme, quant_model_id):
            assert quantized_checkpoint.recipe.scheme == quant_scheme
        def test_base_only(quant_model_id):
            pass
    """)
    r = run(fake, "--collect-only", "-q")
    out = r.stdout.str()
    assert "test_ck[smollm2-135m-instruct-W4A16]" in out and "test_ck[smollm2-135m-instruct-W8A8]" in out
    assert "test_base_only[smollm2-135m-instruct]" in out
    r = run(fake, "--quant-scheme", "W8A8", "-v")
    r.assert_outcomes(passed=2)


def test_xdist_group_per_checkpoint(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_grp="""
        def test_ck(request, quantized_checkpoint, quant_scheme):
            m = request.node.get_closest_marker("xdist_group")
            assert m.args[0] == "smollm2-135m-instruct-" + quant_scheme
    """)
    run(fake).assert_outcomes(passed=2)


def test_gates_pass_and_fail_with_readable_messages(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-report", "report.json", "--junitxml", "junit.xml")
    r.assert_outcomes(passed=3, failed=1)
    out = r.stdout.str()
    assert "quantization gate failed" in out
    assert "acc = 0.5000 ± 0.0100 (n=100), base 0.7000, recovery 0.714; FAILED recovery 0.9 of base 0.7000" in out
    assert "pytest-quant gates" in out and "W8A8" in out and "FAIL" in out
    report = json.loads((fake.path / "report.json").read_text())
    assert report["passed"] is False
    bos = [g for g in report["gates"] if g["key"].endswith("bos-sensitivity")]
    assert {g["quantized_without_bos"] for g in bos} == {0.64, 0.48}
    assert "quant_quant_facts_acc" in (fake.path / "junit.xml").read_text()


def test_bos_gate_fails_when_quantized_loses_more_without_bos(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.7, "bos_drop_W4A16": 0.2}))
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-scheme", "W4A16", "-k", "bos")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*acc with BOS 0.7000, without 0.5000*base loses +0.0200*loses 0.1800 more than the base*"])


def test_baseline_save_then_regression(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makepyfile(test_gates=GATED)
    run(fake, "--quant-scheme", "W4A16", "--quant-save-baseline", "base.json").assert_outcomes(passed=2)
    saved = json.loads((fake.path / "base.json").read_text())
    assert list(saved["metrics"]) == ["smollm2-135m-instruct|W4A16|quant_facts|acc|bos=True"]
    r = run(fake, "--quant-scheme", "W4A16", "--quant-save-baseline", "base.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "exists; pass --quant-overwrite-baseline" in r.stderr.str()
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.65, "W4A16": 0.60}))
    r = run(fake, "--quant-scheme", "W4A16", "--quant-baseline", "base.json", "--quant-limit", "99", "-k", "accuracy")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*baseline base.json: acc = 0.6000*FAILED expected 0.6600 rtol 0.05*"
                            "settings differ from the baseline's: limit 250 -> 99*"])


@pytest.mark.parametrize("marker, message", [
    ('quant_accuracy(task="t", metric="acc", minimum=0.5)', "quant_accuracy got unknown argument(s) minimum"),
    ('quant_accuracy(task="t", metric="acc", min_value=75)', "min_value=75.0 is outside [0, 1]"),
    ('quant_accuracy(task="t", metric="acc")', "give at least one of"),
    ('quant_accuracy(metric="acc", min_value=0.5)', "quant_accuracy needs task="),
    ('quant_bos(task="t", metric="acc", max_delta=-1)', "max_delta must not be negative"),
    ('quant_requires(gpu="H100")', "quant_requires got unknown argument(s) gpu"),
    ('quant_requires(backend="tpu")', "backend must be 'vllm' or 'hf'"),
])
def test_bad_marker_arguments_fail_collection(fake: pytest.Pytester, marker: str, message: str) -> None:
    fake.makepyfile(test_bad=f"""
        import pytest
        @pytest.mark.{marker}
        def test_x(quantized_checkpoint):
            pass
    """)
    r = run(fake)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert message in r.stderr.str()
    assert "test_bad.py::test_x" in r.stderr.str()


def test_gate_marker_needs_the_checkpoint_fixture(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_nofix="""
        import pytest
        @pytest.mark.quant_accuracy(task="t", metric="acc", min_value=0.5)
        def test_x():
            pass
    """)
    r = run(fake)
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "need the test to use the quantized_checkpoint" in r.stderr.str()


@pytest.mark.parametrize("args, message", [
    (["--quant-scheme", "W3A5"], "unknown scheme 'W3A5'"),
    (["--quant-model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--quant-model", "./missing/dir"], "model path './missing/dir' does not exist"),
    (["--quant-backend", "tpu"], "'tpu' is not one of auto, vllm, hf"),
    (["--quant-baseline", "missing.json"], "baseline file missing.json does not exist"),
])
def test_bad_options_are_one_clear_usage_error(fake: pytest.Pytester, args: list[str], message: str) -> None:
    fake.makepyfile(test_a="def test_a(quantized_checkpoint): pass")
    r = run(fake, *args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert message in r.stderr.str()
    assert "Traceback" not in r.stderr.str()


def test_options_resolve_cli_then_env_then_ini_then_marker(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makeini("[pytest]\nquant_limit = 11\nquant_num_fewshot = 3\n")
    fake.makepyfile(test_opt="""
        import pytest
        @pytest.mark.quant_accuracy(task="t", metric="acc", min_value=0.1, limit=13, num_fewshot=1)
        def test_o(quant_session, quantized_checkpoint):
            s = quant_session.settings
            print("LIMIT", s.get("limit", {"limit": 13}), "FEWSHOT", s.get("num_fewshot", {"num_fewshot": 1}))
    """)
    monkeypatch.setenv("QUANT_LIMIT", "12")
    out = run(fake, "--quant-scheme", "W4A16", "-s", "--quant-num-fewshot", "2").stdout.str()
    assert "LIMIT 12 FEWSHOT 2" in out
    monkeypatch.delenv("QUANT_LIMIT")
    out = run(fake, "--quant-scheme", "W4A16", "-s").stdout.str()
    assert "LIMIT 11 FEWSHOT 3" in out


def test_hardware_skips_name_device_and_need(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makepyfile(test_hw="""
        import pytest
        @pytest.mark.quant_requires(min_capability=10.0)
        def test_blackwell():
            pass
        @pytest.mark.quant_requires(backend="vllm")
        def test_needs_vllm():
            pass
        def test_scheme(quantized_checkpoint):
            pass
    """)
    monkeypatch.setenv("FAKE_BACKEND", "vllm")
    r = run(fake, "--quant-scheme", "W4A16", "--quant-scheme", "W8A16", "-rs")
    r.assert_outcomes(passed=2, skipped=2)
    out = r.stdout.str()
    assert "needs a CUDA GPU of capability 10.0+, found CPU only" in out
    assert "W8A16: vLLM's CPU backend has no kernel for it" in out


def test_vllm_backend_without_interpreter_is_an_error_auto_falls_back(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("QUANT_VLLM_PYTHON", raising=False)
    pytester.makepyfile(test_b="""
        def test_b(quant_session):
            print("BACKEND", quant_session.backend, quant_session.backend_reason)
    """)
    r = pytester.runpytest_subprocess("--quant-backend", "vllm")
    r.assert_outcomes(failed=1)
    assert "needs the vLLM environment's interpreter: pass --quant-vllm-python" in r.stdout.str()
    r = pytester.runpytest_subprocess("--quant-backend", "vllm", "--quant-vllm-python", "/no/such/python")
    assert "vLLM interpreter '/no/such/python' does not exist" in r.stdout.str()
    r = pytester.runpytest_subprocess("-s", "--quant-vllm-python", "/no/such/python")
    r.assert_outcomes(passed=1)
    assert "BACKEND hf vLLM unusable" in r.stdout.str()


def test_malformed_yaml_config_names_file_and_field(fake: pytest.Pytester) -> None:
    fake.makefile(".yaml", quant_bad="model_name: m\ntasks:\n- name: t\n  metrics:\n  - name: acc\n    value: lots\n")
    fake.makefile(".yaml", quant_broken="model: [unclosed\n")
    r = run(fake)
    out = r.stdout.str()
    assert "quant_bad.yaml: tasks[0].metrics[0].value: expected" in out
    assert "quant_broken.yaml: not valid YAML" in out
    assert r.ret == pytest.ExitCode.INTERRUPTED


def test_yaml_config_items_run_gates(fake: pytest.Pytester) -> None:
    fake.makefile(".yaml", quant_ok=(
        "model: smollm2-135m-instruct\nscheme: W8A8\nlmeval:\n  task: quant_facts\n  metrics:\n    acc: 0.55\n"
        "  recovery_threshold: 0.9\n"))
    r = run(fake)
    r.assert_outcomes(failed=1)
    assert "quant_ok.yaml: quantization gate failed: acc = 0.5000" in r.stdout.str()


def test_yaml_config_items_skip_schemes_the_device_cannot_run(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_BACKEND", "vllm")
    fake.makefile(".yaml", quant_w8a16=(
        "model: smollm2-135m-instruct\nscheme: W8A16\nlmeval:\n  task: quant_facts\n  metrics:\n    acc: 0.5\n"))
    r = run(fake, "-rs")
    r.assert_outcomes(skipped=1)
    assert "W8A16: vLLM's CPU backend has no kernel" in r.stdout.str()
