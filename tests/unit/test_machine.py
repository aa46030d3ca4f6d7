"""The machine's numerics (infra/machine.py): the dtype CPU evaluations run in follows the emulated CPU."""

from __future__ import annotations

import pytest

from pytest_quant.infra import machine


@pytest.mark.parametrize("flags, switches, dtype", [
    (("avx2",), {}, "float32"),  # the AMD EPYC of CI: no native bf16
    (("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"), {}, "bfloat16"),  # the AMX Xeon
    (("avx2", "avx512f", "avx512_bf16", "amx_bf16"), {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
     "float32"),  # .ci/run's second configuration on the Xeon: a CPU without bf16
    (("avx512_bf16", "amx_bf16"), {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "float32"),
    (("avx512_bf16", "amx_bf16"), {"ATEN_CPU_CAPABILITY": "avx2"}, "float32"),
    (("avx512_bf16", "amx_bf16"), {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, "bfloat16"),
    (("avx512_bf16", "amx_bf16"), {"ATEN_CPU_CAPABILITY": "avx512"}, "bfloat16"),
])
def test_cpu_dtype_follows_the_emulated_cpu(monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...],
                                             switches: dict[str, str], dtype: str) -> None:
    monkeypatch.setattr(machine, "_cpu", lambda: ("test CPU", flags))
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in switches.items():
        monkeypatch.setenv(name, value)
    assert machine.cpu_dtype() == dtype
