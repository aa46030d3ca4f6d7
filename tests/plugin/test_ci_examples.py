"""The CI templates users copy (examples/ci/): valid YAML of a GitHub Actions workflow, every pytest-quant option and
QUANT_* variable they use exists, every scheme of their matrix is one pytest-quant knows, and the JSON report is
uploaded as an artifact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pytest_quant.build.schemes import names as scheme_names
from pytest_quant.session.settings import OPTIONS

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "ci").glob("*.yml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_a_ci_template_uses_only_what_exists(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert {"name", "jobs"} <= set(workflow) and True in workflow  # YAML reads the key `on` as True
    job = workflow["jobs"]["gate"]
    runs = " ".join(step.get("run", "") for step in job["steps"])
    env = {**workflow.get("env", {}), **job.get("env", {})}
    clis, envs = {o.cli for o in OPTIONS}, {o.env for o in OPTIONS}
    used = set(re.findall(r"--quant-[a-z0-9-]+", runs))
    assert used and used <= clis, used - clis
    assert {"--quant-report", "--quant-summary", "--quant-baseline"} <= used
    assert {k for k in env if k.startswith("QUANT_")} <= envs
    assert set(job["strategy"]["matrix"]["scheme"]) <= set(scheme_names())
    uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0].get("if") == "always()" and "quant-report-" in uploads[0]["with"]["path"]


def test_the_templates_are_the_two_ways_to_keep_a_store() -> None:
    texts = {p.name: p.read_text() for p in EXAMPLES}
    assert any("QUANT_SHARED_STORE: ${{ secrets." in t for t in texts.values())
    assert any("actions/cache@" in t for t in texts.values())
