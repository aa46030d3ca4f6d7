"""docs/REFERENCE.md names every option, marker argument and YAML field the code accepts."""

from dataclasses import fields
from pathlib import Path

from pytest_quant.gates import Threshold
from pytest_quant.markers import OPTION_ARGS, RequiresSpec
from pytest_quant.options import OPTIONS
from pytest_quant.yaml_items import LlmCompressorConfig, LmEvalConfig, VllmConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "REFERENCE.md").read_text()


def test_options_documented() -> None:
    for o in OPTIONS:
        assert f"`{o.cli}` | `{o.env}` | `{o.ini}`" in DOC, o.cli


def test_marker_arguments_documented() -> None:
    names = [f.name for f in fields(Threshold)] + [f.name for f in fields(RequiresSpec)] + list(OPTION_ARGS)
    names += ["max_delta", "max_extra_loss", "add_bos_token", "apply_chat_template"]
    for n in names:
        assert f"`{n}`" in DOC, n


def test_yaml_fields_documented() -> None:
    names = [f for f in VllmConfig.model_fields if f != "tasks"] + ["tasks[].name", "tasks[].metrics[].name"]
    names += [f for f in LlmCompressorConfig.model_fields if f != "lmeval"]
    names += [f"lmeval.{f}" for f in LmEvalConfig.model_fields]
    for n in names:
        assert f"`{n}`" in DOC, n
