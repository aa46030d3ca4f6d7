"""The example downstream project passes as shipped, and fails when its threshold is above the measurement."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "downstream"
pytestmark = pytest.mark.slow


def run_example(tmp_path: Path, expected: str | None = None) -> subprocess.CompletedProcess:
    project = tmp_path / "downstream"
    shutil.copytree(EXAMPLE, project)
    if expected is not None:
        cfg = project / "tests" / "quant_smollm2.yaml"
        cfg.write_text(cfg.read_text().replace("acc: 0.55", f"acc: {expected}"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-rA"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_example_passes(tmp_path: Path) -> None:
    r = run_example(tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout
    assert "test_knowledge_is_kept[smollm2-135m-instruct-W4A16]" in r.stdout


def test_example_fails_when_threshold_is_above_the_measurement(tmp_path: Path) -> None:
    r = run_example(tmp_path, expected="0.95")
    assert r.returncode == 1, r.stdout[-4000:]
    assert "quant_smollm2.yaml: quantization gate failed: acc = " in r.stdout
    assert "FAILED expected 0.9500 rtol 0.05" in r.stdout
    assert "1 failed, 2 passed" in r.stdout
