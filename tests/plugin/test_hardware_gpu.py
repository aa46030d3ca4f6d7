"""Hardware markers on whatever device runs the tests: skipped or run, with the device named."""

from __future__ import annotations

import pytest

from pytest_quant.infra.hardware import why_skip
from pytest_quant.session.session import QuantSession


@pytest.mark.quant_requires(min_capability=10.0)
def test_needs_blackwell(quant_session: QuantSession) -> None:
    """Runs only on capability 10.0+; elsewhere skipped with the device found in the reason."""
    assert quant_session.device.kind == "cuda" and quant_session.device.capability >= 100


@pytest.mark.quant_requires(min_capability=8.0)
def test_needs_ampere(quant_session: QuantSession) -> None:
    assert quant_session.device.kind == "cuda" and quant_session.device.capability >= 80


def test_this_device_runs_the_guides_schemes(quant_session: QuantSession) -> None:
    """Both guide schemes run here with the session's backends: vLLM's own answer decides where vLLM is configured
    (on a CPU without vLLM's W4A16 kernel, --quant-backend auto evaluates W4A16 with transformers), the table
    elsewhere; on a GPU of capability 8.0 to 9.x (H100, H200) both run on vLLM."""
    device = quant_session.device
    print(f"device: {device.describe()}")
    for scheme in ("W4A16", "W8A8"):
        backend = quant_session.supported(quant_session.eval_backend(scheme))
        assert why_skip(device, backend, quant_session.backend_reason, scheme) is None, scheme
        if device.kind == "cuda" and 80 <= (device.capability or 0) < 100:
            assert backend.name == quant_session.backend, (scheme, quant_session.why_other(scheme))
