"""Shared fixtures for the real end-to-end tests: one store, the CI profile, the bundled model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

# Imported here, before any test: pytester restores sys.modules after each test that uses it, and
# llm-compressor's modules register kernels in compressed-tensors at import, so a second import (after a
# test imported them first inside pytester) fails with "A backend with function name ... is already registered".
import llmcompressor.modifiers.gptq  # noqa: F401,E402
import llmcompressor.modifiers.transform.smoothquant  # noqa: F401,E402
from llmcompressor import oneshot  # noqa: F401,E402

from pytest_quant.calibration import CalibrationSpec
from pytest_quant.evaluate import release_models
from pytest_quant.store import Store

MODEL = "smollm2-135m-instruct"
CI_CALIBRATION = CalibrationSpec("bundled", num_samples=32, max_seq_length=256)


@pytest.fixture(scope="module", autouse=True)
def release_engines() -> Iterator[None]:
    """Close this process's kept vLLM engines after each module: the next module's subprocess suites start
    their own, and four CPU engines (about 4 GiB each) would not fit beside them in 24 GiB."""
    yield
    release_models()


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The checkpoint store: $QUANT_CACHE_DIR when set (CI shares it with the main job), else a temp dir."""
    root = os.environ.get("QUANT_CACHE_DIR")
    return Store(Path(root) if root else tmp_path_factory.mktemp("quant-store"))


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("QUANT_VLLM_PYTHON")
    if not python:
        pytest.fail("QUANT_VLLM_PYTHON is not set: run scripts/setup.sh and export it (see README)")
    return python
