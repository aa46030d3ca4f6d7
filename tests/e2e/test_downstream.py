"""The example downstream project passes as shipped, and fails when its threshold is above the measurement."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "downstream"


def run_example(tmp_path: Path, recovery: str | None = None) -> subprocess.CompletedProcess:
    project = tmp_path / "downstream"
    shutil.copytree(EXAMPLE, project)
    if recovery is not None:
        cfg = project / "tests" / "quant_smollm2.yaml"
        cfg.write_text(cfg.read_text().replace("recovery_threshold: 0.9", f"recovery_threshold: {recovery}"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-rA"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_example_passes(tmp_path: Path) -> None:
    r = run_example(tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "4 passed" in r.stdout
    assert "test_knowledge_is_kept[smollm2-135m-instruct-W8A8]" in r.stdout


def test_example_fails_when_threshold_is_above_the_measurement(tmp_path: Path) -> None:
    r = run_example(tmp_path, recovery="1.3")
    assert r.returncode == 1, r.stdout[-4000:]
    assert "quantization gate failed" in r.stdout and "recovery 1.3: FAIL" in r.stdout
    assert "2 failed, 2 passed" in r.stdout
