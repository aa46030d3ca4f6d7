"""Project fixtures built on pytest-quant's: a greedy answer from the checkpoint under test."""

from __future__ import annotations

import pytest

from pytest_quant.build.checks import generate


@pytest.fixture(scope="session")
def capital_of_france(quantized_checkpoint) -> str:
    return generate(quantized_checkpoint.path, "What is the capital of France?")
