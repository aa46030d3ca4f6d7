"""Every bad value a user can type: exit 4 (a usage error) and one line that names it, never a traceback.

Each case runs a real pytest session (no fakes: the configure-time checks, the vLLM probe and the store are
the real ones) on a one-test project, in this process; the cases in ``SUBPROCESS`` run in a new interpreter, as a
user's command line does (and as the hub libraries need, which read their offline switches once, at import).
docs/RELIABILITY.md lists the same table.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import sys
from pathlib import Path

import pytest

TEST = "def test_a(quantized_checkpoint):\n    pass\n"
# The cases that need the model's layers share one store (CI's main job has converted the bundled model there).
SHARED_STORE = os.environ.get("QUANT_CACHE_DIR") or tempfile.mkdtemp(prefix="pytest-quant-bad-input-")


def broken_python(root: Path) -> str:
    path = root / "broken-python"
    path.write_text(f"#!{sys.executable}\nimport sys\nprint(\"ModuleNotFoundError: No module named 'vllm'\", "
                    "file=sys.stderr)\nsys.exit(1)\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def setup_files(root: Path) -> dict[str, str]:
    """Files some cases point at: a file where a directory belongs, calibration files, checkpoints."""
    (root / "afile").write_text("x")
    (root / "empty.jsonl").write_text("\n")
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "unterminated\n')
    (root / "nofield.jsonl").write_text('{"prompt": "x"}\n')
    plain = root / "plain-model"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    quantized = root / "quantized-model"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}}}}))
    (quantized / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated header
    adir = root / "adir"
    adir.mkdir()
    ok = root / "quantized-g32"  # a W4A16 group-32 checkpoint's config and headers (no weights needed to refuse)
    ok.mkdir()
    (ok / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                  "group_size": 32}}}}}))
    header = json.dumps({"l.weight_packed": {"dtype": "I32", "shape": [8, 8], "data_offsets": [0, 256]},
                         "l.weight_scale": {"dtype": "BF16", "shape": [8, 2], "data_offsets": [256, 288]}}).encode()
    (ok / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(288))
    (ok / "tokenizer.json").write_text("{}")
    return {"afile": str(root / "afile"), "adir": str(adir), "quantized_ok": str(ok), "store": SHARED_STORE, "empty": str(root / "empty.jsonl"), "broken": str(root / "broken.jsonl"),
            "nofield": str(root / "nofield.jsonl"), "plain": str(plain), "quantized": str(quantized),
            "broken_python": broken_python(root)}


# (id, command-line arguments, environment, ini lines, the message's words)
CASES = [
    ("limit-negative", ["--quant-limit", "-5"], {}, "", "--quant-limit: bad value '-5' for limit: input should be greater than 0"),
    ("limit-zero", ["--quant-limit", "0"], {}, "", "--quant-limit: bad value '0' for limit: input should be greater than 0"),
    ("fewshot-negative", ["--quant-num-fewshot", "-1"], {}, "", "bad value '-1' for num_fewshot: input should be greater than or equal to 0"),
    ("group-size-word", ["--quant-group-size", "abc"], {}, "", "bad value 'abc' for group_size: expected a positive integer, -1"),
    ("group-size-zero", ["--quant-group-size", "0"], {}, "", "for group_size: expected a positive integer, -1"),
    ("samples-zero", ["--quant-num-samples", "0"], {}, "", "bad value '0' for num_samples: input should be greater than 0"),
    ("timeout-word", ["--quant-eval-timeout", "abc"], {}, "", "bad value 'abc' for eval_timeout: input should be a valid number"),
    ("vllm-python-missing", ["--quant-vllm-python", "/no/such/python"], {}, "",
     "vLLM interpreter '/no/such/python' does not exist"),
    ("vllm-python-broken", ["--quant-vllm-python", "{broken_python}"], {}, "", "is not usable (ModuleNotFoundError"),
    ("vllm-without-interpreter", ["--quant-backend", "vllm"], {}, "", "--quant-backend vllm needs the vLLM environment's"),
    ("no-cacheprovider", ["-p", "no:cacheprovider"], {}, "", "pass --quant-cache-dir DIR (or set QUANT_CACHE_DIR)"),
    ("cache-dir-is-a-file", ["--quant-cache-dir", "{afile}"], {}, "", "exists and is not a directory"),
    ("scheme", ["--quant-scheme", "W3A5"], {}, "", "unknown scheme 'W3A5'; choose one of W4A16, W8A16, W8A8"),
    # found only once the model's layers are known (before any test runs); the bundled model from a shared store
    ("group-size-divides-no-layer", ["--quant-group-size", "100", "--quant-cache-dir", "{store}"], {}, "",
     "W4A16 with group_size=100 cannot quantize 210 layer(s) whose input columns are not divisible by 100"),
    ("ignore-everything", ["--quant-ignore", "re:.*", "--quant-group-size", "auto", "--quant-cache-dir", "{store}"],
     {}, "", "the recipe quantizes no layer: every Linear layer matches ignore=['lm_head', 're:.*']"),
    ("hub-model-offline", ["--quant-model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--quant-group-size", "auto"],
     {"HF_HUB_OFFLINE": "1"}, "", "cannot fetch hub model 'HuggingFaceTB/SmolLM2-135M-Instruct': the Hugging Face Hub is "
     "not reachable and the model is not in the local cache"),
    ("checkpoint-contradicted", ["--quant-checkpoint", "{quantized_ok}", "--quant-group-size", "64"], {}, "",
     "--quant-group-size 64 contradicts the checkpoint's group_size 32; the checkpoint's own recipe is used"),
    ("baseline-directory", ["--quant-baseline", "{adir}"], {}, "", "is a directory; pass the baseline file"),
    ("model-name", ["--quant-model", "no-such-model"], {}, "", "unknown model 'no-such-model'"),
    ("model-path", ["--quant-model", "./missing/dir"], {}, "", "model path './missing/dir' does not exist"),
    ("model-already-quantized", ["--quant-model", "{quantized}"], {}, "",
     "is already quantized (compressed-tensors, format pack-quantized): pass it as --quant-checkpoint"),
    ("backend", ["--quant-backend", "tpu"], {}, "", "bad value 'tpu' for backend: input should be 'auto', 'vllm' or 'hf'"),
    ("baseline-missing", ["--quant-baseline", "missing.json"], {}, "", "baseline file missing.json does not exist"),
    ("env-limit", [], {"QUANT_LIMIT": "many"}, "", "QUANT_LIMIT: bad value 'many' for limit: input should be a valid integer"),
    ("ini-alpha", [], {}, "quant_alpha = 2", "ini quant_alpha: bad value '2' for alpha: input should be less than 0.5"),
    ("alpha-zero", ["--quant-alpha", "0"], {}, "", "bad value '0' for alpha: input should be greater than 0"),
    ("undecided", ["--quant-undecided", "maybe"], {}, "", "bad value 'maybe' for undecided: input should be 'fail', 'pass' or 'xfail'"),
    ("max-items", ["--quant-max-items", "-1"], {}, "", "bad value '-1' for max_items: input should be greater than 0"),
    ("item-seed", ["--quant-item-seed", "x"], {}, "", "bad value 'x' for item_seed: input should be a valid integer"),
    ("calibration-missing", ["--quant-calibration", "missing.jsonl"], {}, "", "calibration file 'missing.jsonl' does not exist"),
    ("calibration-empty", ["--quant-calibration", "{empty}"], {}, "", "empty.jsonl has no rows"),
    ("calibration-broken-line", ["--quant-calibration", "{broken}"], {}, "", "broken.jsonl, line 2: not valid JSON"),
    ("calibration-no-field", ["--quant-calibration", "{nofield}"], {}, "",
     "nofield.jsonl, line 1: needs a 'messages' (chat) or 'text' field; it has prompt"),
    ("batch-size", ["--quant-calibration-batch-size", "0"], {}, "", "bad value '0' for calibration_batch_size: input should be 'auto' or input should be greater than 0"),
    ("actorder", ["--quant-actorder", "random"], {}, "", "bad value 'random' for actorder: input should be 'static', 'group', 'weight' or 'none'"),
    ("dampening", ["--quant-dampening-frac", "1.5"], {}, "", "bad value '1.5' for dampening_frac: input should be less than 1"),
    ("task", ["--quant-task", "no_such_task"], {}, "", "unknown lm-eval task 'no_such_task'"),
    ("metric", ["--quant-metric", "accuracy"], {}, "", "task 'quant_facts' has no metric 'accuracy'; it gives acc, acc_norm"),
    ("checkpoint-not-quantized", ["--quant-checkpoint", "{plain}"], {}, "",
     "plain-model is not a compressed-tensors checkpoint (quant_method None)"),
    ("checkpoint-truncated", ["--quant-checkpoint", "{quantized}"], {}, "",
     "cannot be evaluated: model.safetensors is unreadable"),
    ("report-dir", ["--quant-report", "/no/such/dir/report.json"], {}, "", "the directory of '/no/such/dir/report.json' does not exist"),
    ("device", ["--quant-device", "tpu"], {}, "", "bad value 'tpu' for device: input should be 'auto', 'cpu' or 'cuda'"),
    ("recovery", ["--quant-recovery", "2"], {}, "", "bad value '2' for recovery: input should be less than or equal to 1.5"),
    ("build-gpus", ["--quant-build-gpus", "0"], {}, "", "bad value '0' for build_gpus: input should be greater than 0"),
    ("min-top1", ["--quant-min-top1", "1.5"], {}, "", "bad value '1.5' for min_top1: input should be less than or equal to 1"),
    ("env-flag", [], {"QUANT_REBUILD": "maybe"}, "", "QUANT_REBUILD: bad value 'maybe' for rebuild: input should be a valid boolean"),
    ("profile", ["--quant-profile", "huge"], {}, "", "bad value 'huge' for profile: input should be 'guide' or 'ci'"),
]


SUBPROCESS = {"limit-negative", "env-limit", "ini-alpha", "vllm-python-broken", "hub-model-offline"}


@pytest.mark.parametrize("case, args, env, ini, message", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_exit_4_and_one_line(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str,
                                          args: list[str], env: dict[str, str], ini: str, message: str) -> None:
    for name in ("QUANT_VLLM_PYTHON", "QUANT_CACHE_DIR", "QUANT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    files = setup_files(pytester.path)
    if any("{store}" in a for a in args):  # the base model converted first: its progress bars are not the refusal
        from pytest_quant.build.models import materialize, resolve_model
        from pytest_quant.infra.store import Store

        materialize(resolve_model("smollm2-135m-instruct"), Store(SHARED_STORE))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(**files))
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_a=TEST)
    argv = [a.format(**files) for a in args]
    r = pytester.runpytest_subprocess(*argv) if case in SUBPROCESS else pytester.runpytest_inprocess(*argv)
    err = r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: pytest-quant: "), err
    assert message.format(**files) in lines[0]
    assert "Traceback" not in err + r.stdout.str() and "INTERNALERROR" not in err + r.stdout.str()


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
