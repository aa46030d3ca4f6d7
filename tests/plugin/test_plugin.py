"""The plugin through pytester: options, parametrization, markers, verdicts, skips, reports, baselines, YAML.

Builds and evaluations are replaced by canned per-item results here (tests/plugin/fake_pipeline.py) so that these tests check
the plugin's own logic in seconds; tests/test_e2e_*.py run the real pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.session.settings import OPTIONS
from pytest_quant.session.session import QuantSession

from . import fake_pipeline

FAKE_MODULE = (Path(__file__).parent / "fake_pipeline.py").read_text()  # for subprocess runs

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
def fake(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory for runs that build and evaluate nothing (tests/plugin/fake_pipeline.py)."""
    for name in ("QUANT_VLLM_PYTHON", "QUANT_CACHE_DIR", "QUANT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def fake_subprocess(p: pytest.Pytester) -> list[str]:
    """The fake for runs in a subprocess (xdist workers): the module beside the tests, and the option loading it."""
    p.makepyfile(fake_pipeline=FAKE_MODULE)
    return ["-p", "fake_pipeline"]


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in this process, the fake pipeline passed as a plugin object: no interpreter starts."""
    return p.runpytest_inprocess("-p", "no:randomly", *args, plugins=[fake_pipeline])


def run_subprocess(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "no:randomly", *fake_subprocess(p), *args)


def test_every_option_is_on_the_command_line(pytester: pytest.Pytester) -> None:
    out = pytester.runpytest_inprocess("--help").stdout.str()
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


def test_xdist_group_per_checkpoint_only_under_xdist(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_grp="""
        def test_ck(request, quantized_checkpoint, quant_scheme):
            m = request.node.get_closest_marker("xdist_group")
            if request.config.pluginmanager.hasplugin("xdist"):
                assert m.args[0] == "smollm2-135m-instruct-" + quant_scheme
            else:
                assert m is None
    """)
    run(fake).assert_outcomes(passed=2)
    r = run(fake, "-p", "no:xdist", "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    r.assert_outcomes(passed=2)


def test_loadgroup_schedules_each_checkpoint_as_one_group(fake: pytest.Pytester) -> None:
    """xdist reads the groups while collecting (it suffixes the node id with @group): ours must be there by then,
    or two workers build the same checkpoint and one worker gets every scheme (seen on two H100s)."""
    fake.makepyfile(test_grp="""
        def test_ck(request, quantized_checkpoint, quant_scheme):
            assert request.node.nodeid.endswith("@smollm2-135m-instruct-" + quant_scheme), request.node.nodeid
    """)
    run_subprocess(fake, "-n", "2", "--dist", "loadgroup").assert_outcomes(passed=2)


def test_gates_pass_and_fail_with_readable_messages(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-report", "report.json", "--junitxml", "junit.xml")
    r.assert_outcomes(passed=3, failed=1)
    out = r.stdout.str()
    assert "quantization gate failed" in out
    r.stdout.fnmatch_lines(["*acc = 0.5*n=250), base 0.7*; FAIL on 250 items after 1 look: recovery 0.9: FAIL*"])
    assert "pytest-quant gates" in out and "W8A8" in out and "FAIL" in out
    report = json.loads((fake.path / "report.json").read_text())
    assert report["passed"] is False and report["verdicts"] == {"PASS": 3, "FAIL": 1}
    assert report["failed_tests"] == ["test_gates.py::test_accuracy[smollm2-135m-instruct-W8A8]"]
    assert "quant_quant_facts_acc" in (fake.path / "junit.xml").read_text()


def test_report_says_passed_only_when_everything_passed(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.7, "W8A8": 0.7}))
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-report", "report.json")
    r.assert_outcomes(passed=4)
    assert json.loads((fake.path / "report.json").read_text())["passed"] is True
    fake.makepyfile(test_other="def test_unrelated():\n    assert False\n")
    r = run(fake, "--quant-report", "report.json")
    r.assert_outcomes(passed=4, failed=1)
    report = json.loads((fake.path / "report.json").read_text())
    assert report["passed"] is False and report["exitstatus"] == 1


def test_report_under_xdist_gathers_every_workers_rows(fake: pytest.Pytester) -> None:
    """Two workers: the controller's report holds both schemes' rows and fails on W8A8's failed gate."""
    fake.makepyfile(test_gates=GATED)
    r = run_subprocess(fake, "-n", "2", "--dist", "loadgroup", "-k", "accuracy", "--quant-report", "report.json")
    r.assert_outcomes(passed=1, failed=1)
    report = json.loads((fake.path / "report.json").read_text())
    assert {(g["scheme"], g["verdict"], g["outcome"]) for g in report["gates"]} == {
        ("W4A16", "PASS", "passed"), ("W8A8", "FAIL", "failed")}
    assert report["passed"] is False
    assert report["failed_tests"] == ["test_gates.py::test_accuracy[smollm2-135m-instruct-W8A8]"]


def test_evaluation_crash_is_an_error_row_and_the_report_fails(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_CRASH", "1")
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-scheme", "W4A16", "--quant-report", "report.json")
    r.assert_outcomes(failed=2)
    report = json.loads((fake.path / "report.json").read_text())
    assert report["passed"] is False and report["verdicts"] == {"ERROR": 2}
    assert all("engine core died" in g["message"] for g in report["gates"])
    r.stdout.fnmatch_lines(["*smollm2-135m-instruct*W4A16*ERROR*"])


def test_undecided_follows_the_option(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.665}))
    fake.makepyfile(test_gates="""
        import pytest
        @pytest.mark.quant_accuracy(task="quant_facts", metric="acc", recovery=0.95, limit=60, max_items=60)
        def test_accuracy(quantized_checkpoint):
            pass
    """)
    r = run(fake, "--quant-scheme", "W4A16")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*UNDECIDED (the items cannot decide) on 60 items*"])
    run(fake, "--quant-scheme", "W4A16", "--quant-undecided", "pass").assert_outcomes(passed=1)
    run(fake, "--quant-scheme", "W4A16", "--quant-undecided", "xfail").assert_outcomes(xfailed=1)


def test_undecided_gates_look_at_more_items_up_to_the_budget(fake: pytest.Pytester, monkeypatch, tmp_path) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.665}))
    fake.makepyfile(test_gates="""
        import pytest
        @pytest.mark.quant_accuracy(task="quant_facts", metric="acc", recovery=0.95)
        def test_accuracy(quantized_checkpoint):
            pass
    """)
    r = run(fake, "--quant-scheme", "W4A16", "--quant-profile", "ci", "--quant-report", "report.json")
    (gate,) = json.loads((fake.path / "report.json").read_text())["gates"]
    assert gate["looks"] >= 2 and gate["n"] in (120, 240, 389)  # the CI profile's looks: 60, 120, 240, all 389
    asked = [json.loads(line)[3] for line in log.read_text().splitlines()]
    assert asked[:2] == [60, 60] and max(asked) == gate["n"]
    r.stdout.fnmatch_lines([f"*on {gate['n']} items after {gate['looks']} looks*"])


def test_bos_gate_fails_when_quantized_loses_more_without_bos(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.7, "bos_drop_W4A16": 0.2}))
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-scheme", "W4A16", "-k", "bos")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*acc with BOS 0.7*, without 0.5*; base loses +0.0*FAIL on*max_extra_loss 0.05: FAIL*"])


def test_deselected_tests_plan_no_evaluations(fake: pytest.Pytester, monkeypatch, tmp_path) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    fake.makepyfile(test_gates=GATED)
    run(fake, "--quant-scheme", "W4A16", "-k", "accuracy").assert_outcomes(passed=1, deselected=1)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert {c[2] for c in calls} == {True}, "a deselected BOS test's without-BOS runs were evaluated"


def test_baseline_save_merge_then_regression(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makepyfile(test_gates=GATED)
    run(fake, "--quant-scheme", "W4A16", "--quant-save-baseline", "base.json").assert_outcomes(passed=2)
    saved = json.loads((fake.path / "base.json").read_text())
    assert list(saved["metrics"]) == ["smollm2-135m-instruct|W4A16|quant_facts|acc|bos=True"]
    r = run(fake, "--quant-scheme", "W4A16", "--quant-save-baseline", "base.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "exists; pass --quant-overwrite-baseline" in r.stderr.str()
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.7, "W4A16": 0.66, "W8A8": 0.69}))
    run(fake, "--quant-scheme", "W8A8", "--quant-save-baseline", "base.json", "--quant-overwrite-baseline")
    assert len(json.loads((fake.path / "base.json").read_text())["metrics"]) == 2  # merged, not replaced
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.62, "W4A16": 0.52}))
    r = run(fake, "--quant-scheme", "W4A16", "--quant-baseline", "base.json", "--quant-limit", "99", "-k", "accuracy")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*baseline base.json recovery 0.95 on * items: FAIL*baseline base.json (paired on the "
                            "same items): acc 0.5* vs stored 0.7*settings differ from the baseline's*"])


def test_a_model_compared_with_its_own_baseline_passes_and_a_drop_fails_paired(fake: pytest.Pytester,
                                                                              monkeypatch) -> None:
    """Issue 18: the aggregate baseline said UNDECIDED for a model against itself; per-item, paired, it passes."""
    fake.makepyfile(test_gates=GATED)
    common = ("--quant-scheme", "W4A16", "--quant-profile", "ci", "-k", "accuracy")
    run(fake, *common, "--quant-save-baseline", "bl.json").assert_outcomes(passed=1)
    entry = next(iter(json.loads((fake.path / "bl.json").read_text())["metrics"].values()))
    assert len(entry["items"]["ids"]) == len(entry["items"]["values"]) == entry["n"] and entry["task_digest"]
    r = run(fake, *common, "--quant-baseline", "bl.json", "--quant-report", "r.json")
    r.assert_outcomes(passed=1)
    (row,) = json.loads((fake.path / "r.json").read_text())["gates"]
    assert row["extra"]["baseline_comparison"] == "paired" and "baseline bl.json recovery 0.95" in row["message"]
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.70, "W4A16": 0.56}))  # a 10-point drop since the release
    r = run(fake, *common, "--quant-baseline", "bl.json", "--quant-recovery", "0.5")  # the base gate alone would pass
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*baseline bl.json recovery 0.95 on * items: FAIL*"])


def test_a_baseline_without_items_is_compared_unpaired_and_says_so(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_gates=GATED)
    key = "smollm2-135m-instruct|W4A16|quant_facts|acc|bos=True"
    (fake.path / "old.json").write_text(json.dumps({"format": "pytest-quant-baseline/1", "metrics": {
        key: {"value": 0.66, "stderr": 0.03, "n": 250}}}))
    r = run(fake, "--quant-scheme", "W4A16", "--quant-baseline", "old.json", "-k", "accuracy", "-rA")
    r.stdout.fnmatch_lines(["*baseline old.json (unpaired: the baseline holds no item results (a format 1 file))*"])


def test_a_refused_run_still_writes_its_report(fake: pytest.Pytester, tmp_path) -> None:
    """Issue 18: a refused --quant-checkpoint exited 4 and wrote no report for the CI step that reads it."""
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-checkpoint", str(tmp_path / "missing"), "--quant-report", "r.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    report = json.loads((fake.path / "r.json").read_text())
    assert report["passed"] is False and report["exitstatus"] == 4
    (row,) = report["gates"]
    assert row["verdict"] == "ERROR" and "refused: --quant-checkpoint" in row["message"], row


def test_an_llmcompressor_config_silent_on_calibration_takes_the_session_profile(fake: pytest.Pytester,
                                                                                monkeypatch, tmp_path) -> None:
    """Issue 18: under quant_profile = ci a config without calibration fields built 512 x 2048 (583 s)."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_BACKEND", "vllm")  # the config evaluates with vLLM (its lmeval.model default)
    fake.makefile(".yaml", quant_w4="model: smollm2-135m-instruct\nscheme: W4A16\nlmeval:\n  task: quant_facts\n")
    run(fake, "--quant-profile", "ci", "--quant-report", "r.json")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    built = [c[4] for c in calls if c[0] == "W4A16"]
    assert built and all(b == [32, 256] for b in built), calls  # the CI profile's calibration, not 512 x 2048
    assert min(c[3] for c in calls) == 60 and max(c[3] for c in calls) <= 389, calls  # its looks, not 1000 items


def test_missing_baseline_key_is_said(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_gates=GATED)
    (fake.path / "b.json").write_text(json.dumps({"format": "pytest-quant-baseline/1", "metrics": {}}))
    r = run(fake, "--quant-scheme", "W4A16", "--quant-baseline", "b.json", "-k", "accuracy", "-rA")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*baseline b.json has no entry*nothing to compare with*"])


@pytest.mark.parametrize("marker, message", [
    ('quant_accuracy(task="quant_facts", metric="acc", minimum=0.5)', "quant_accuracy got unknown argument(s) minimum"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value=75)', "min_value=75.0 is outside [0, 1]"),
    ('quant_accuracy(task="quant_facts", metric="acc")', "give at least one of"),
    ('quant_accuracy(metric="acc", min_value=0.5)', "quant_accuracy needs task="),
    ('quant_accuracy(task="quant_facts", metric="accuracy", min_value=0.5)',
     "task 'quant_facts' has no metric 'accuracy'; it gives acc, acc_norm"),
    ('quant_accuracy(task="no_such_task", metric="acc", min_value=0.5)', "unknown lm-eval task 'no_such_task'"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value=0.5, alpha=2)', "bad value 2 for alpha"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value=0.5, limit=0)', "bad value 0 for limit"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value=0.5, add_bos_token="yes")',
     "quant_accuracy: add_bos_token: Input should be a valid boolean, got 'yes'"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value="0.5")',
     "quant_accuracy: min_value: Input should be a valid number, got '0.5'"),
    ('quant_accuracy(task="quant_facts", metric="acc", min_value=True)',
     "quant_accuracy: min_value: Input should be a valid number, got True"),
    ('quant_accuracy("quant_facts", "acc", "x", min_value=0.5)', "quant_accuracy takes at most 2 positional"),
    ('quant_bos(task="quant_facts", metric="acc", max_delta=-1)',
     "quant_bos: max_delta: Input should be greater than or equal to 0, got -1"),
    ('quant_requires(gpu="H100")', "quant_requires got unknown argument(s) gpu"),
    ('quant_requires(backend="tpu")', "quant_requires: backend: backend must be one of 'vllm', 'hf', got 'tpu'"),
    ('quant_requires(gpus=0)', "quant_requires: gpus: Input should be greater than 0, got 0"),
    ('quant_requires(min_capability=-8)', "quant_requires: min_capability: a capability must be positive"),
    ('quant_requires(scheme="W3A3")', "quant_requires: scheme: unknown scheme 'W3A3'; choose one of W4A16"),
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
    assert "Traceback" not in r.stderr.str() + r.stdout.str()


def test_gate_marker_needs_the_checkpoint_fixture(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_nofix="""
        import pytest
        @pytest.mark.quant_accuracy(task="quant_facts", metric="acc", min_value=0.5)
        def test_x():
            pass
    """)
    r = run(fake)
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "need the test to use the quantized_checkpoint" in r.stderr.str()


def test_options_resolve_cli_then_env_then_ini_then_marker(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makeini("[pytest]\nquant_limit = 11\nquant_num_fewshot = 3\n")
    fake.makepyfile(test_opt="""
        import pytest
        @pytest.mark.quant_accuracy(task="quant_facts", metric="acc", min_value=0.1, limit=13, num_fewshot=1)
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
    r = run(fake, "--quant-scheme", "W4A16", "--quant-scheme", "W8A16", "-rs", "--quant-backend", "vllm")
    r.assert_outcomes(passed=2, skipped=2)  # with auto, W8A16 would go to transformers
    out = r.stdout.str()
    assert "needs a CUDA GPU of capability 10.0+, found CPU only" in out
    assert "W8A16: vLLM's CPU backend has no kernel for it" in out


def test_malformed_yaml_config_names_file_and_field(fake: pytest.Pytester) -> None:
    fake.makefile(".yaml", quant_bad="model_name: m\nlimit: 5\nnum_fewshot: 0\ntasks:\n- name: quant_facts\n"
                                     "  metrics:\n  - name: acc\n    value: lots\n")
    fake.makefile(".yaml", quant_broken="model: [unclosed\n")
    fake.makefile(".yaml", quant_typo="model: m\nscheme: W4A16\nlmeval:\n  task: quant_facts\n  recovery_treshold: 0.9\n")
    r = run(fake)
    out = r.stdout.str()
    assert "quant_bad.yaml: tasks[0].metrics[0].value: Input should be a valid number" in out
    assert "quant_broken.yaml: not valid YAML" in out
    assert "quant_typo.yaml: lmeval.recovery_treshold: unknown key (not in the upstream format)" in out
    assert r.ret == pytest.ExitCode.INTERRUPTED


def test_llmcompressor_yaml_items_gate_every_metric_with_recovery(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_BACKEND", "vllm")  # llm-compressor's lmeval.model default
    fake.makefile(".yaml", quant_ok=(
        "model: smollm2-135m-instruct\nscheme: W8A8\nlmeval:\n  task: quant_facts\n  num_fewshot: 0\n  limit: 100\n"
        "  metrics:\n    acc: 0.9\n  recovery_threshold: {acc: 0.9}\n"))
    r = run(fake, "-rA", "-W", "default")
    r.assert_outcomes(failed=2)  # acc (0.9) and acc_norm (the default 0.95): 0.5 vs 0.7 fails both
    out = r.stdout.str()
    assert "recovery=0.9" in out and "recovery=0.95" in out
    assert "is below the expected 0.9000 (-5%): a warning, not a failure" in out


def test_vllm_format_yaml_items_compare_with_the_stored_value_at_rtol(fake: pytest.Pytester, monkeypatch) -> None:
    """vLLM's config format: the model as it is, each metric against its stored value at vLLM's default rtol."""
    from pytest_quant.evaluate.tasks import item_order

    monkeypatch.setenv("FAKE_BACKEND", "vllm")  # the format's backend
    ids = item_order("quant_facts", None)[:50]
    measured = sum(fake_pipeline.difficulty(i) < 0.70 for i in ids) / len(ids)  # the fake's base model
    fake.makefile(".yaml", quant_near=f"model_name: smollm2-135m-instruct\nlimit: 50\nnum_fewshot: 0\ntasks:\n- name: quant_facts\n"
                                      f"  metrics:\n  - name: acc\n    value: {measured * 1.02:.6f}\n",
                  quant_far=f"model_name: smollm2-135m-instruct\nlimit: 50\nnum_fewshot: 0\ntasks:\n- name: quant_facts\n"
                            f"  metrics:\n  - name: acc\n    value: {measured * 1.2:.6f}\n")
    r = run(fake, "-rA", "--quant-report", "report.json")
    r.assert_outcomes(passed=1, failed=1)
    rows = {Path(g["nodeid"]).name.split("::")[0]: g for g in json.loads((fake.path / "report.json").read_text())["gates"]}
    assert (rows["quant_near.yaml"]["verdict"], rows["quant_far.yaml"]["verdict"]) == ("PASS", "FAIL")
    assert rows["quant_near.yaml"]["scheme"] == "as-is" and rows["quant_near.yaml"]["quantized"] == measured
    assert rows["quant_near.yaml"]["n"] == 50 and "rtol 0.08" in rows["quant_far.yaml"]["message"]


def test_yaml_items_skip_what_the_device_cannot_run(fake: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_BACKEND", "vllm")
    fake.makefile(".yaml", quant_w8a16=(
        "model: smollm2-135m-instruct\nscheme: W8A16\nlmeval:\n  task: quant_facts\n"))
    fake.makefile(".yaml", quant_big="model: smollm2-135m-instruct\nscheme: W4A16\nnum_gpus: 4\nlmeval:\n"
                                     "  task: quant_facts\n")
    fake.makefile(".yaml", quant_hf="model: smollm2-135m-instruct\nscheme: W4A16\nlmeval:\n  task: quant_facts\n"
                                    "  model: hf\n")
    r = run(fake, "-rs", "--quant-backend", "vllm")
    r.assert_outcomes(skipped=3 * 2)
    out = r.stdout.str()
    assert "W8A16: vLLM's CPU backend has no kernel" in out
    assert "needs 4 GPUs, found CPU only" in out
    assert "needs the hf backend; this session uses vllm" in out


def test_a_silent_llmcompressor_config_follows_the_per_scheme_backend(fake: pytest.Pytester, monkeypatch) -> None:
    """llm-compressor's lmeval.model defaults to vllm; a config that does not name it is evaluated as
    --quant-backend auto picks (transformers where vLLM has no kernel), one that names vllm is skipped there."""
    monkeypatch.setenv("FAKE_BACKEND", "vllm")
    monkeypatch.setenv("FAKE_SUPPORT", json.dumps({"W4A16": {"error": "no cpu_gemm_wna16 op"}, "W8A8": {}}))
    config = "model: smollm2-135m-instruct\nscheme: W4A16\nlmeval:\n  task: quant_facts\n  recovery_threshold: 0.5\n"
    fake.makefile(".yaml", quant_silent=config, quant_named=config + "  model: vllm\n")
    r = run(fake, "-rs", "--quant-backend", "auto")
    r.assert_outcomes(passed=2, skipped=2)
    r.stdout.fnmatch_lines(["*needs the vllm backend; this session uses hf (evaluated with transformers: W4A16: vLLM "
                            "cannot run it on CPU only (x86_64): no cpu_gemm_wna16 op)*"])


def test_yaml_cadence_follows_llmcompressor_when_set(fake: pytest.Pytester, monkeypatch) -> None:
    fake.makefile(".yaml", quant_weekly="cadence: weekly\nmodel: smollm2-135m-instruct\nscheme: W4A16\n"
                                        "lmeval:\n  task: quant_facts\n  recovery_threshold: 0.5\n")
    monkeypatch.setenv("FAKE_BACKEND", "vllm")
    monkeypatch.setenv("CADENCE", "nightly")
    r = run(fake, "-rs")
    r.assert_outcomes(skipped=2)
    assert "does not include CADENCE='nightly'" in r.stdout.str()
    monkeypatch.delenv("CADENCE")
    run(fake).assert_outcomes(passed=2)


def test_summary_markdown_and_github_step_summary(fake: pytest.Pytester, monkeypatch, tmp_path) -> None:
    """--quant-summary writes the Markdown (and its figure when matplotlib is installed); GitHub's step summary
    gets the same text appended without a flag."""
    fake.makepyfile(test_gates=GATED)
    step = tmp_path / "step-summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.70, "W4A16": 0.50}))
    r = run(fake, "--quant-scheme", "W4A16", "-k", "accuracy", "--quant-summary", "gates.md")
    r.assert_outcomes(failed=1)
    md = (fake.path / "gates.md").read_text()
    assert "| ❌ | smollm2-135m-instruct | W4A16 | quant_facts | acc |" in md and "<details>" in md
    assert step.read_text() == "earlier step\n" + md
    r.stdout.fnmatch_lines(["*items base right, quantized wrong*the discordant pairs*", "*item *: '*' (target *"])


def test_html_report_gets_each_gates_verdict_items_and_figure(fake: pytest.Pytester, monkeypatch) -> None:
    """With pytest-html active, a gate's test carries its verdict, message, flipped items and the figure; without
    --html no figure is drawn."""
    pytest.importorskip("pytest_html")
    from pytest_quant.plugin import html_extras

    drawn: list[int] = []
    plot = html_extras.plot
    monkeypatch.setattr(html_extras, "plot", lambda rows, path: drawn.append(len(rows)) or plot(rows, path))
    fake.makepyfile(test_gates=GATED)
    monkeypatch.setenv("FAKE_VALUES", json.dumps({"base": 0.70, "W4A16": 0.50}))
    run(fake, "--quant-scheme", "W4A16", "-k", "accuracy", "--html", "report.html", "--self-contained-html"
        ).assert_outcomes(failed=1)
    page = (fake.path / "report.html").read_text()
    assert "W4A16 quant_facts acc: FAIL" in page and "items base right, quantized wrong" in page
    assert "image/png" in page and drawn == [1]
    run(fake, "--quant-scheme", "W4A16", "-k", "accuracy").assert_outcomes(failed=1)
    assert drawn == [1]


def test_the_plugin_is_inert_until_asked(pytester: pytest.Pytester, monkeypatch, tmp_path) -> None:
    """An unrelated project with pytest-quant installed: bad QUANT_* values and a vLLM interpreter that records
    every start change nothing, until a test asks for a quant fixture."""
    probe = tmp_path / "probed"
    vllm = tmp_path / "vllm-python"
    vllm.write_text(f"#!/bin/sh\ntouch {probe}\nexit 1\n")
    vllm.chmod(0o755)
    monkeypatch.setenv("QUANT_MAX_ITEMS", "abc")
    monkeypatch.setenv("QUANT_VLLM_PYTHON", str(vllm))
    pytester.makepyfile(test_app="def test_app():\n    assert 1 + 1 == 2\n")
    pytester.runpytest_inprocess("-p", "no:randomly").assert_outcomes(passed=1)
    assert not probe.exists()
    pytester.makepyfile(test_quant="def test_q(quant_model_id):\n    pass\n")
    r = pytester.runpytest_inprocess("-p", "no:randomly")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*QUANT_MAX_ITEMS: bad value 'abc' for max_items*"])


def test_quant_session_alone_starts_the_session(fake: pytest.Pytester, monkeypatch) -> None:
    """A test that uses only quant_session (no quant option, marker or other fixture) gets a started session, not a
    KeyError; one that cannot start fails with pytest-quant's one-line reason."""
    fake.makepyfile(test_s="def test_s(quant_session):\n    assert quant_session.settings.get('limit') == 250\n")
    run(fake).assert_outcomes(passed=1)
    monkeypatch.setenv("QUANT_LIMIT", "many")
    result = run(fake)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Failed: pytest-quant: QUANT_LIMIT: bad value 'many'*"])


def test_each_gate_is_planned_once_at_collection_finish(fake: pytest.Pytester, monkeypatch) -> None:
    """A gate's item order, looks and targets are computed once (at collection finish) and handed to its run."""
    calls = []
    order = QuantSession.order
    monkeypatch.setattr(QuantSession, "order", lambda self, *a, **k: calls.append(a) or order(self, *a, **k))
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-scheme", "W8A8")
    assert sum(r.parseoutcomes().get(k, 0) for k in ("passed", "failed")) == 2
    assert len(calls) == 2, calls  # one accuracy gate and one BOS gate, each planned once


def test_an_algorithm_this_machine_cannot_run_is_skipped_before_any_build(fake: pytest.Pytester) -> None:
    """llm-compressor 0.14's AWQ needs an accelerator: on a CPU every test of the case is skipped with the reason,
    nothing is built; the same run with GPTQ runs."""
    fake.makepyfile(test_gates=GATED)
    r = run(fake, "--quant-scheme", "W4A16", "--quant-algorithm", "awq", "--quant-device", "cpu", "-rs")
    r.assert_outcomes(skipped=2)
    r.stdout.fnmatch_lines(["*W4A16+awq: llm-compressor 0.14's AWQ needs an accelerator*"])
    run(fake, "--quant-scheme", "W4A16", "--quant-algorithm", "gptq", "--quant-device", "cpu").assert_outcomes(passed=2)


RECIPE = (Path(__file__).parents[2] / "fixtures" / "recipes" / "fp8_dynamic.yaml").read_text()


def test_a_quant_recipe_marker_builds_the_tests_checkpoint_from_its_file(fake: pytest.Pytester) -> None:
    """The marker form of --quant-recipe: the file beside the test names the test's checkpoint (recipe:<stem>), its
    text is the recipe built; other tests keep the session's schemes."""
    fake.mkdir("recipes")
    (fake.path / "recipes" / "fp8_mine.yaml").write_text(RECIPE)
    fake.makepyfile(test_r="""
        import pytest
        @pytest.mark.quant_recipe("recipes/fp8_mine.yaml")
        def test_marked(quantized_checkpoint, quant_case, quant_session):
            assert quant_case.scheme == "recipe:fp8_mine"
            assert "scheme: FP8_DYNAMIC" in quant_session.recipe(quant_case.scheme).text
        def test_plain(quantized_checkpoint, quant_case):
            assert not quant_case.scheme.startswith("recipe:")
    """)
    r = run(fake, "-v")
    out = r.stdout.str()
    assert r.ret == 0, out
    assert "test_marked[smollm2-135m-instruct-recipe:fp8_mine] PASSED" in out
    assert "test_plain[smollm2-135m-instruct-W4A16] PASSED" in out


@pytest.mark.parametrize("path, message", [
    ("missing.yaml", "recipe file"),
    ("bad.yaml", "no modifier of type 'nosuchmodifier' found"),
    (None, "quant_recipe needs path=..."),
])
def test_a_bad_quant_recipe_marker_is_exit_4_naming_the_test(fake: pytest.Pytester, path: str | None,
                                                             message: str) -> None:
    (fake.path / "bad.yaml").write_text("quant_stage:\n  quant_modifiers:\n    NoSuchModifier:\n      targets: [Linear]\n")
    marker = "quant_recipe" if path is None else f'quant_recipe("{path}")'
    fake.makepyfile(test_r=f"""
        import pytest
        @pytest.mark.{marker}
        def test_marked(quantized_checkpoint):
            pass
    """)
    r = run(fake)
    err = r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + err
    assert "test_r.py::test_marked" in err and message in err.lower() and "Traceback" not in err
