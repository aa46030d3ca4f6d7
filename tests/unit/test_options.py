"""Options: resolution order (CLI > env > ini > marker > profile > default), lists and bad values."""

from __future__ import annotations


import pytest

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.session.settings import Settings


def test_option_order_cli_env_ini_marker_profile_default(quant_env: pytest.MonkeyPatch) -> None:
    quant_env.setenv("QUANT_LIMIT", "7")
    s = Settings(cli={"limit": "5"}, ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 5 and s.source("limit") == (5, "--quant-limit")
    s = Settings(ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 7 and s.source("limit") == (7, "QUANT_LIMIT")
    quant_env.delenv("QUANT_LIMIT")
    s = Settings(ini={"limit": "6"})
    assert s.get("limit", {"limit": 8}) == 6 and s.source("limit") == (6, "ini quant_limit")
    s = Settings()
    assert s.get("limit", {"limit": 8}) == 8
    assert s.get("limit") == 250  # the guide profile
    assert Settings(cli={"profile": "ci"}).get("limit") == 60
    assert s.get("backend") == "auto"


def test_option_lists_and_bad_values(quant_env: pytest.MonkeyPatch) -> None:
    quant_env.setenv("QUANT_MODEL", "a/b, c/d")
    s = Settings(cli={"scheme": ["W4A16,W8A8"]})
    assert s.get("scheme") == ["W4A16", "W8A8"]
    assert s.get("model") == ["a/b", "c/d"]
    with pytest.raises(QuantUsageError, match="--quant-backend: bad value 'tpu' for backend: input should be 'auto', "
                                              "'vllm' or 'hf'$"):
        Settings(cli={"backend": "tpu"})
    with pytest.raises(QuantUsageError, match="--quant-profile: bad value 'huge' for profile: input should be 'guide' "
                                              "or 'ci'$"):
        Settings(cli={"profile": "huge"})
    with pytest.raises(QuantUsageError, match="marker argument: bad value 0 for limit: input should be greater than 0"):
        Settings().get("limit", {"limit": 0})
    quant_env.setenv("QUANT_LIMIT", "many")
    for cli in ({}, {"limit": "5"}):  # each source is checked, also where a higher one overrides it
        with pytest.raises(QuantUsageError, match="^QUANT_LIMIT: bad value 'many' for limit: input should be a valid "
                                                  "integer"):
            Settings(cli=cli)


