"""Shared fixtures and the test tiers: a test's tier is its directory (tests/unit, tests/plugin, tests/e2e, tests/gpu).

Nothing heavy is imported here: the unit tier runs without torch, transformers or llm-compressor
(tests/unit/test_layers.py checks it).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.infra.store import Store

MODEL = "smollm2-135m-instruct"
TIERS = ("unit", "plugin", "e2e", "gpu")  # pyproject.toml lists the markers; scripts/test.sh runs them by directory
CI_CALIBRATION = CalibrationSpec("bundled", num_samples=32, max_seq_length=256)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier; where a tier above unit runs, import llm-compressor before any test does.

    pytester restores sys.modules after each test that uses it, and llm-compressor's modules register kernels in
    compressed-tensors at import, so a second import (after a test imported them first inside pytester) fails with
    "A backend with function name ... is already registered".
    """
    tiers = set()
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
            tiers.add(tier)
    if tiers - {"unit"}:
        for module in ("llmcompressor.modifiers.gptq", "llmcompressor.modifiers.transform.smoothquant", "llmcompressor"):
            importlib.import_module(module)


@pytest.fixture(scope="module", autouse=True)
def release_engines(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close this process's kept vLLM engines after each module: the next module's subprocess suites start
    their own, and four CPU engines (about 4 GiB each) would not fit beside them in 24 GiB."""
    yield
    if request.path.parent.name in ("e2e", "gpu"):
        from pytest_quant.evaluate.gpu_memory import release_models

        release_models()


@pytest.fixture
def quant_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without QUANT_* variables (set them with the returned monkeypatch)."""
    for name in [n for n in os.environ if n.upper().startswith("QUANT_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The checkpoint store: $QUANT_CACHE_DIR when set (CI shares it with the main job), else a temp dir."""
    root = os.environ.get("QUANT_CACHE_DIR")
    return Store(Path(root) if root else tmp_path_factory.mktemp("quant-store"))


@pytest.fixture(scope="session")
def vllm_support(vllm_python: str) -> dict[str, dict[str, str]]:
    """vLLM's own answer on this machine: which kernel runs each scheme, or why none (hardware.skip_reason)."""
    import json

    from pytest_quant.build.schemes import get_scheme
    from pytest_quant.evaluate.backends.vllm_probe import probe_schemes
    from pytest_quant.infra.machine import cpu_dtype

    schemes = {"W4A16": get_scheme("W4A16").with_group(64), "W8A8": get_scheme("W8A8")}
    asked = {n: {"group": s.config_group(), "format": s.format} for n, s in schemes.items()}
    return probe_schemes(vllm_python, None, json.dumps(asked, sort_keys=True), cpu_dtype())


@pytest.fixture(scope="session")
def vllm_scheme(vllm_support: dict[str, dict[str, str]]) -> str:
    """A quantized scheme vLLM's CPU build runs here: W4A16 where it has the kernel (AVX-512), else W8A8."""
    return "W4A16" if "kernel" in vllm_support["W4A16"] else "W8A8"


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("QUANT_VLLM_PYTHON")
    if not python:
        pytest.fail("QUANT_VLLM_PYTHON is not set: run scripts/setup.sh and export it (see README)")
    return python
