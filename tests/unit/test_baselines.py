"""Baselines: round trip, merge, regression against them, and bad baseline files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pytest_quant.gate.baseline import Baseline, save_baseline
from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.gate.stats import FAIL, PASS
from pytest_quant.gate.verdict import GateItems, GateRow


ROW = GateRow.from_dict({"model": "m", "scheme": "W4A16", "task": "quant_facts", "metric": "acc", "verdict": "PASS",
                         "passed": True, "message": "", "key": "m|W4A16|quant_facts|acc|bos=True", "quantized": 0.7,
                         "n": 250, "extra": {"stderr": 0.02, "settings": {"items": 250, "backend": "vllm"},
                                             "versions": {"lm_eval": "0.4.13"}}})


def test_baseline_roundtrip_merge_and_regression(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert save_baseline(path, [ROW], overwrite=False) == 1
    with pytest.raises(QuantUsageError, match="exists; pass --quant-overwrite-baseline"):
        save_baseline(path, [ROW], overwrite=False)
    other = dataclasses.replace(ROW, key="m|W8A8|quant_facts|acc|bos=True", quantized=0.72)
    save_baseline(path, [other], overwrite=True)
    assert set(Baseline.load(path).entries) == {ROW.key, other.key}  # merged, nothing dropped
    b = Baseline.load(path)
    v, text = b.compare(ROW.key, "acc", 0.75, 0.02, ROW.extra.settings, {"lm_eval": "0.4.13"}, 0.05, 0.05)
    assert v == PASS and "library versions differ" not in text
    v, text = b.compare(ROW.key, "acc", 0.55, 0.02, {"items": 60, "backend": "vllm"}, {"lm_eval": "0.5"}, 0.05, 0.05)
    assert v == FAIL and "settings differ from the baseline's: items 250 -> 60" in text
    assert "library versions differ from the baseline's: lm_eval 0.4.13 -> 0.5" in text
    v, text = b.compare("other", "acc", 0.1, 0.0, {}, {}, 0.05, 0.05)
    assert v is None and "has no entry 'other'" in text


def test_a_hand_edited_value_is_refused_not_silently_compared_on_the_items(tmp_path: Path) -> None:
    """A user raises a baseline's value (as vLLM's YAML ``value:`` is edited) and leaves its items: the file is refused
    with one line saying what to do; its items alone still load, and so does the value without items (unpaired)."""
    items = GateItems(ids=list(range(100)), quantized=[1.0] * 57 + [0.0] * 43)
    row = dataclasses.replace(ROW, quantized=0.57, extra=dataclasses.replace(ROW.extra, items=items))
    path = tmp_path / "b.json"
    save_baseline(path, [row], overwrite=False)
    assert Baseline.load(path).entries[ROW.key]["value"] == 0.57
    data = json.loads(path.read_text())
    data["metrics"][ROW.key]["value"] = 0.80
    path.write_text(json.dumps(data))
    with pytest.raises(QuantUsageError, match=r"value is 0.8 but its own 100 per-item values give 0.57: the value "
                                              "was edited by hand"):
        Baseline.load(path)
    del data["metrics"][ROW.key]["items"]
    path.write_text(json.dumps(data))
    assert Baseline.load(path).entries[ROW.key]["value"] == 0.80


def test_bad_baselines(tmp_path: Path) -> None:
    with pytest.raises(QuantUsageError, match="does not exist"):
        Baseline.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(QuantUsageError, match="not valid JSON"):
        Baseline.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(QuantUsageError, match="not a pytest-quant baseline"):
        Baseline.load(tmp_path / "y.json")


