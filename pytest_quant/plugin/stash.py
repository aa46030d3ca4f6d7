"""Where pytest-quant keeps its state on pytest's config, for the plugin, YAML items and the shipped suite."""

from __future__ import annotations

import pytest

from pytest_quant.gate.baseline import Baseline
from pytest_quant.plugin.rows import RowCollector
from pytest_quant.session.session import QuantSession

SESSION = pytest.StashKey[QuantSession]()
BASELINE = pytest.StashKey["Baseline | None"]()
COLLECTOR = pytest.StashKey[RowCollector]()
MARKED_REFUSALS = pytest.StashKey[dict]()  # test node id -> why its quant_recipe marker is refused (exit 4)
SPECS = pytest.StashKey[dict]()  # an item's parsed markers, from collection to its run
PLANS = pytest.StashKey[dict]()  # an item's gate plans (gate_runs.GatePlan), from collection finish to its run

REFUSED = pytest.StashKey[Exception]()  # why the session could not start, for collection to refuse the run with
