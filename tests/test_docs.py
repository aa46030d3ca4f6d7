"""docs/REFERENCE.md names every option, marker argument and YAML field the code accepts."""

from dataclasses import fields
from pathlib import Path

from pytest_quant.gates import Threshold
from pytest_quant.markers import RequiresSpec
from pytest_quant.options import OPTIONS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "REFERENCE.md").read_text()


def test_options_documented() -> None:
    for o in OPTIONS:
        assert f"`{o.cli}` | `{o.env}` | `{o.ini}`" in DOC, o.cli


def test_marker_arguments_documented() -> None:
    names = [f.name for f in fields(Threshold)] + [f.name for f in fields(RequiresSpec)]
    names += ["max_delta", "max_extra_loss", "num_fewshot", "limit", "add_bos_token", "apply_chat_template"]
    for n in names:
        assert f"`{n}`" in DOC, n


def test_yaml_fields_documented() -> None:
    for n in ["model_name", "tasks[].name", "rtol", "model", "scheme", "dataset_id", "dataset_split",
              "num_calibration_samples", "lmeval.task", "lmeval.metrics", "lmeval.recovery_threshold"]:
        assert f"`{n}`" in DOC, n
