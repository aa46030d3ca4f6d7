"""Turn the session's options into the suite's per-task markers (before the plugin reads them)."""

from __future__ import annotations

import pytest

from pytest_quant.plugin.stash import SESSION
from pytest_quant.evaluate.tasks import primary_metric


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "suite_task" in metafunc.fixturenames:
        tasks = metafunc.config.stash[SESSION].settings.get("task")
        metafunc.parametrize("suite_task", tasks, ids=tasks)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    s = config.stash[SESSION].settings
    for item in items:
        callspec = getattr(item, "callspec", None)
        task = callspec.params.get("suite_task") if callspec else None
        if task is None:
            continue
        metric = s.get("metric") or primary_metric(task)
        if item.get_closest_marker("suite_accuracy"):
            item.add_marker(pytest.mark.quant_accuracy(task=task, metric=metric, recovery=s.get("recovery")))
        if item.get_closest_marker("suite_bos"):
            item.add_marker(pytest.mark.quant_bos(task=task, metric=metric,
                                                  max_extra_loss=s.get("max_bos_extra_loss")))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "suite_accuracy: accuracy gate per --quant-task (pytest-quant suite)")
    config.addinivalue_line("markers", "suite_bos: BOS gate per --quant-task (pytest-quant suite)")
