"""Every bad value a user can type: exit 4 (a usage error) and one line that names it, never a traceback.

Each case runs a real pytest session (no fakes: the configure-time checks, the vLLM probe and the store are
the real ones) on a one-test project, in this process; the cases marked ``subprocess`` run in a new interpreter, as
a user's command line does (and as the hub libraries need, which read their offline switches once, at import).
The cases are data: tests/plugin/bad_input.yaml; docs/RELIABILITY.md lists the same table.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    (root / "recipe-broken.yaml").write_text("quant_stage:\n  quant_modifiers:\n    GPTQModifier: [unclosed\n")
    (root / "recipe-unknown.yaml").write_text("quant_stage:\n  quant_modifiers:\n    MagicModifier:\n      x: 1\n")
    (root / "recipe-nothing.yaml").write_text("quant_stage:\n  modifiers:\n    SmoothQuantModifier:\n"
                                              "      smoothing_strength: 0.8\n")
    gptq = root / "gptq-model"
    gptq.mkdir()
    (gptq / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    return {"gptq": str(gptq), "recipe_broken": str(root / "recipe-broken.yaml"),
            "recipe_unknown": str(root / "recipe-unknown.yaml"), "recipe_nothing": str(root / "recipe-nothing.yaml"),
            "afile": str(root / "afile"), "adir": str(adir), "quantized_ok": str(ok), "store": SHARED_STORE, "empty": str(root / "empty.jsonl"), "broken": str(root / "broken.jsonl"),
            "nofield": str(root / "nofield.jsonl"), "plain": str(plain), "quantized": str(quantized),
            "broken_python": broken_python(root)}


CASES = yaml.safe_load((Path(__file__).with_name("bad_input.yaml")).read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_value_is_exit_4_and_one_line(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                          case: dict[str, Any]) -> None:
    args, ini, message = case["args"], case.get("ini", ""), case["message"]
    for name in ("QUANT_VLLM_PYTHON", "QUANT_CACHE_DIR", "QUANT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    files = setup_files(pytester.path)
    if any("{store}" in a for a in args):  # the base model converted first: its progress bars are not the refusal
        from pytest_quant.build.models import materialize, resolve_model
        from pytest_quant.infra.store import Store

        materialize(resolve_model("smollm2-135m-instruct"), Store(SHARED_STORE))
    for k, v in case.get("env", {}).items():
        monkeypatch.setenv(k, v.format(**files))
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_a=TEST)
    argv = [a.format(**files) for a in args]
    r = pytester.runpytest_subprocess(*argv) if case.get("subprocess") else pytester.runpytest_inprocess(*argv)
    err = r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: pytest-quant: "), err
    assert message.format(**files) in lines[0]
    assert "Traceback" not in err + r.stdout.str() and "INTERNALERROR" not in err + r.stdout.str()


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c["id"] for c in CASES}) == len(CASES)
    assert all(set(c) <= {"id", "args", "env", "ini", "subprocess", "message"} for c in CASES)
    doc = (Path(__file__).parents[2] / "docs" / "RELIABILITY.md").read_text()
    assert [c["id"] for c in CASES if f"| `{c['id']}` |" not in doc] == []  # the docs list every case
