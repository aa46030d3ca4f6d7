"""pytest-quant's hooks: the one interface through which another plugin or a conftest changes the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_quant.session.session import QuantSession


@pytest.hookspec(firstresult=True)
def pytest_quant_session_class(config: pytest.Config) -> "type[QuantSession] | None":
    """The class of this run's :class:`~pytest_quant.session.session.QuantSession`, or None for the default.

    A subclass replaces pipeline steps (``build``, ``items``, ``check_build``, the backend and device
    properties): a remote build service, or the plugin tier's canned results (tests/plugin/fake_pipeline.py).
    """
