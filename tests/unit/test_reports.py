"""Reports from a recorded main job: flipped items, the figure, the versioned JSON schema, progress lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest



ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "recorded"


def recorded_rows() -> list:
    """The recorded main job's gates, typed as the plugin holds them."""
    from pytest_quant.gate.verdict import GateRow

    return [GateRow.from_dict(g) for g in json.loads((RECORDED / "main-job-amd-avx2-report.json").read_text())["gates"]]


def test_flipped_items_of_a_real_run_are_the_discordant_pairs_the_gate_decided_on() -> None:
    """The main job's report from a 2-core AVX2 EPYC (tests/recorded): W4A16's FAIL lists the items the base got
    right and W4A16 wrong, with their prompts; a PASS shows nothing in the terminal."""
    from pytest_quant.plugin.summary import flip_lines, flips, markdown

    rows = recorded_rows()
    w4, w8 = rows[0], rows[3]
    f = flips(w4)
    base, quant = w4.extra.items.base, w4.extra.items.quantized
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

    out = plot(recorded_rows(), tmp_path / "gates.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_report_is_versioned_and_its_published_schema_is_current(tmp_path) -> None:
    """A real main job's gates (recorded) written as a report validate against the model and its published schema;
    a report of the format before versioning, or with an unknown key, is refused naming the field."""
    import subprocess
    import sys

    from pytest_quant.plugin.report import REPORT_FORMAT, Report, write_report

    recorded = json.loads((RECORDED / "main-job-amd-avx2-report.json").read_text())
    path = tmp_path / "report.json"
    write_report(path, recorded_rows(), recorded["failed_tests"], 1,
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
    from pytest_quant.gate.verdict import GateRow

    row = GateRow.from_dict({"model": "m", "scheme": "W4A16", "task": "quant_facts", "metric": "acc", "verdict": "FAIL",
                             "passed": False, "message": "",
                             "extra": {"items": {"ids": [0, 1], "base": [1.0, 1.0], "quantized": [0.0, 1.0],
                                                 "answers": {"base": [3, 2], "quantized": [0, 2]}}}})
    lines = flip_lines(row)
    assert lines[1] == ("    item 0: 'Which city is the capital city of Turkey?' (target 'Ankara', base 'Ankara', "
                        "quantized 'Bratislava')")


