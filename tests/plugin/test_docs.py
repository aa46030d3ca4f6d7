"""docs/REFERENCE.md names every option, marker argument and YAML field the code accepts; the docs' marker
examples are accepted by the code."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from pytest_quant.gate.scores import Threshold
from pytest_quant.session.markers import SPECS
from pytest_quant.session.settings import OPTIONS
from pytest_quant.plugin.yaml_configs import LlmCompressorConfig, LmEvalConfig, VllmConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "REFERENCE.md").read_text()


def test_options_documented() -> None:
    for o in OPTIONS:
        assert f"`{o.cli}` | `{o.env}` | `{o.ini}`" in DOC, o.cli


def test_marker_arguments_documented() -> None:
    names = {n for spec in SPECS.values() for n in spec.model_fields}
    assert {f.name for f in fields(Threshold)} <= names
    for n in sorted(names):
        assert f"`{n}`" in DOC, n


def test_yaml_fields_documented() -> None:
    names = [f for f in VllmConfig.model_fields if f != "tasks"] + ["tasks[].name", "tasks[].metrics[].name"]
    names += [f for f in LlmCompressorConfig.model_fields if f != "lmeval"]
    names += [f"lmeval.{f}" for f in LmEvalConfig.model_fields]
    for n in names:
        assert f"`{n}`" in DOC, n


def test_marker_examples_in_the_docs_are_accepted(tmp_path, monkeypatch) -> None:
    """Every ``@pytest.mark.quant_*(...)`` in the README's and docs' Python examples parses (no stale arguments),
    on a machine that has the hub tasks they name (gsm8k) in its datasets cache, as a user's has."""
    from pytest_quant.evaluate.tasks import check_available

    (tmp_path / "openai___gsm8k").mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    check_available.cache_clear()
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))]
    blocks = [b for t in texts for b in re.findall(r"```python\n(.*?)```", t, re.S)]
    calls = [c for b in blocks for c in re.findall(r"@pytest\.mark\.(quant_\w+\(.*?\))\n", b, re.S)]
    assert len(calls) >= 2, calls
    for call in calls:
        mark = eval(f"pytest.mark.{call}", {"pytest": pytest}).mark  # noqa: S307 (our own docs)
        SPECS[mark.name].parse(mark.name, mark.args, mark.kwargs)
