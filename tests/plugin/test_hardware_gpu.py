"""Hardware markers on whatever device runs the tests: skipped or run, with the device named."""

from __future__ import annotations

import pytest

from pytest_quant.infra.hardware import skip_reason
from pytest_quant.session.session import QuantSession


@pytest.mark.quant_requires(min_capability=10.0)
def test_needs_blackwell() -> None:
    """Runs only on capability 10.0+; elsewhere skipped with the device found in the reason."""


@pytest.mark.quant_requires(min_capability=8.0)
def test_needs_ampere(quant_session: QuantSession) -> None:
    assert quant_session.device.kind == "cuda" and quant_session.device.capability >= 80


def test_this_device_runs_the_guides_schemes(quant_session: QuantSession) -> None:
    """On an H100/H200 (9.0) both guide schemes run; on a CPU both have vLLM kernels."""
    device = quant_session.device
    print(f"device: {device.describe()}")
    for scheme in ("W4A16", "W8A8"):
        assert skip_reason(scheme, device, "vllm") is None, (scheme, device)
