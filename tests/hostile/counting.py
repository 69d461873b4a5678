"""Counting the hostile suite's cases by boundary (a pytest plugin).

Every hostile case carries ``@pytest.mark.hostile("<boundary>")`` (on the test, a ``pytest.param`` or the module's
``pytestmark``; the closest one wins). The plugin copies the boundary into each report's ``user_properties`` (so
it reaches the controller of an ``xdist`` run) and prints, after the run::

    hostile inputs by boundary: files N, rows N, ... (passed); xfail (known bugs): rows N, ...

With ``--collect-only`` it prints what was collected instead. ``tests/hostile/conftest.py`` registers the plugin
when the suite is collected; a ``tests/conftest.py`` that lists it in ``pytest_plugins`` makes the controller of a
``-n`` run print the summary too.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

import pytest

#: The boundaries, in the order the summary lists them.
BOUNDARIES: Final = (
    "files", "rows", "configs", "cli", "records", "environments", "backends", "checkpoints",
)  # fmt: skip
PROPERTY: Final = "hostile"
SUMMARY_PREFIX: Final = "hostile inputs by boundary"


def boundary_of(item: pytest.Item) -> str | None:
    """The boundary of a hostile case (its closest ``hostile`` marker), ``None`` for any other test."""
    marker = item.get_closest_marker(PROPERTY)
    if marker is None:
        return None
    (boundary,) = marker.args
    if boundary not in BOUNDARIES:
        raise pytest.UsageError(f"{item.nodeid}: unknown hostile boundary {boundary!r}; use one of {BOUNDARIES}.")
    return str(boundary)


def format_counts(counts: Counter[str]) -> str:
    """``files 3, rows 5`` in :data:`BOUNDARIES` order (boundaries with no case left out); ``none`` if empty."""
    parts = [f"{name} {counts[name]}" for name in BOUNDARIES if counts[name]]
    return ", ".join(parts) if parts else "none"


class HostileCounter:
    """Collects the boundaries of the hostile cases that ran (or were collected) and prints the summary."""

    def __init__(self) -> None:
        self.passed: Counter[str] = Counter()
        self.xfailed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.collected: Counter[str] = Counter()
        self.collected_xfail: Counter[str] = Counter()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            boundary = boundary_of(item)
            if boundary is None:
                continue
            item.user_properties.append((PROPERTY, boundary))
            if item.get_closest_marker("xfail") is not None:
                self.collected_xfail[boundary] += 1
            else:
                self.collected[boundary] += 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        boundary = dict(report.user_properties).get(PROPERTY)
        if not isinstance(boundary, str):
            return
        if report.when == "call" and report.passed and not hasattr(report, "wasxfail"):
            self.passed[boundary] += 1
        elif report.skipped and hasattr(report, "wasxfail"):
            self.xfailed[boundary] += 1
        elif report.failed:
            self.failed[boundary] += 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        if config.option.collectonly:
            if self.collected or self.collected_xfail:
                total = sum(self.collected.values())
                terminalreporter.write_line(
                    f"{SUMMARY_PREFIX} (collected): {format_counts(self.collected)} (total {total}); "
                    f"xfail (known bugs): {format_counts(self.collected_xfail)}"
                )
            return
        if not (self.passed or self.xfailed or self.failed):
            return
        line = (
            f"{SUMMARY_PREFIX}: {format_counts(self.passed)} (total {sum(self.passed.values())} passed); "
            f"xfail (known bugs): {format_counts(self.xfailed)}"
        )
        if self.failed:
            line += f"; FAILED: {format_counts(self.failed)}"
        terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and one counter per run (this module may be reached twice: ``pytest_plugins`` of
    ``tests/conftest.py`` and the suite's own conftest)."""
    config.addinivalue_line(
        "markers", "hostile(boundary): a bad input the hostile suite counts under BOUNDARY (tests/hostile)"
    )
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(HostileCounter(), PLUGIN_NAME)


PLUGIN_NAME: Final = "hostile-counter"
