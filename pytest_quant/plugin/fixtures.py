"""The fixtures pytest-quant gives tests and users' repositories: the session, the case, the model, its calibration
set and the quantized checkpoint (each session-scoped; a refusal fails the test with its one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.build.recipes import RecipeSpec
from pytest_quant.infra.errors import QuantError
from pytest_quant.plugin import activation
from pytest_quant.session.session import Case, QuantSession


@pytest.fixture(scope="session")
def quant_session(request: pytest.FixtureRequest) -> QuantSession:
    """The session's pytest-quant state (settings, store, device, backend), started here when nothing else asked
    for it yet (a test that uses only this fixture); a session that cannot start fails the test with why."""
    return _or_fail(lambda: activation.activate(request.config))


@pytest.fixture(scope="session")
def quant_case(request: pytest.FixtureRequest) -> Case:
    """The case under test: base model, scheme and (with --quant-checkpoint) the given checkpoint."""
    return request.param


@pytest.fixture(scope="session")
def quant_model_id(request: pytest.FixtureRequest) -> str:
    """The model under test, as given to --quant-model."""
    if hasattr(request, "param"):
        return request.param
    return request.getfixturevalue("quant_case").model


@pytest.fixture(scope="session")
def quant_scheme(quant_case: Case) -> str:
    return quant_case.scheme


@pytest.fixture(scope="session")
def quant_recipe(quant_session: QuantSession, quant_scheme: str) -> RecipeSpec:
    """The recipe for the scheme under test, with the session's knobs."""
    return quant_session.recipe(quant_scheme)


@pytest.fixture(scope="session")
def quant_base_model(quant_session: QuantSession, quant_model_id: str) -> Path:
    """A local transformers checkpoint of the unquantized model."""
    return _or_fail(lambda: quant_session.base(quant_model_id)[0])


@pytest.fixture(scope="session")
def calibration_dataset(quant_session: QuantSession, quant_base_model: Path) -> Any:
    """The tokenized calibration set, prepared as the guides do."""
    from pytest_quant.build.checkpoint import load_tokenizer
    from pytest_quant.build.calibration import prepare_calibration

    return _or_fail(lambda: prepare_calibration(quant_session.calibration(), load_tokenizer(quant_base_model)))


@pytest.fixture(scope="session")
def quantized_checkpoint(quant_session: QuantSession, quant_case: Case) -> Checkpoint:
    """The compressed-tensors checkpoint under test: built once (then cached), or the one given."""
    return _or_fail(lambda: quant_session.checkpoint(quant_case))


def _or_fail(fn: Any) -> Any:
    try:
        return fn()
    except QuantError as e:
        pytest.fail(f"pytest-quant: {e}", pytrace=False)
