"""pytest-html extras for gate tests: each gate's verdict and message, its flipped items and the figure.

Registered by the plugin only when pytest-html writes a report in this run (``--html``); it adds to the report
through pytest-html's own ``extras`` API in the ``pytest_runtest_makereport`` hook, as pytest-html documents.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_quant.gate.verdict import GateRow
from pytest_quant.plugin.rows import ROW_PROPERTY
from pytest_quant.plugin.summary import SYMBOLS, describe_item, flips, plot


def gate_html(row: GateRow) -> str:
    """One gate as HTML: verdict, message, and every item it lost (with the prompt and target where bundled)."""
    head = f"{SYMBOLS.get(row.verdict, '')} {row.scheme} {row.task} {row.metric}: {row.verdict}"
    parts = [f"<p><b>{html.escape(head)}</b></p>", f"<p>{html.escape(row.message)}</p>"]
    f = flips(row)
    if f:
        parts.append(f"<p>{len(f['lost'])} of {f['items']} items {html.escape(f['lost_means'])}, "
                     f"{len(f['gained'])} the reverse:</p>")
        lines = (describe_item(row.task, i, f["answers"].get(i)) for i in f["lost"])
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    return "".join(parts)


class HtmlExtras:
    """The hook, with pytest-html's ``extras`` module."""

    def __init__(self, extras: Any) -> None:
        self.extras = extras

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        report = yield
        rows = [GateRow.from_dict(v) for k, v in item.user_properties if k == ROW_PROPERTY]
        if report.when == "call" and rows:
            extras = list(getattr(report, "extras", []))
            extras += [self.extras.html(gate_html(r)) for r in rows]
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    png = plot(rows, Path(tmp) / "gates.png").read_bytes()
                extras.append(self.extras.png(base64.b64encode(png).decode(), name="gates"))
            except ImportError:
                pass  # matplotlib is optional: the verdicts and items are there without the figure
            report.extras = extras
        return report


def register(config: pytest.Config) -> None:
    """Add the extras when pytest-html writes a report in this run (installed is not enough: a figure is about
    0.9 s of matplotlib per gate)."""
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        from pytest_html import extras

        config.pluginmanager.register(HtmlExtras(extras), "pytest-quant-html")
