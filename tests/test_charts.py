"""Metrics charts (tinkerflow.shell.io.charts): one matplotlib line per series, inlined as SVG in an HTML page."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from tinkerflow.shell.io.charts import chart_series, metrics_chart_html

SVG = "{http://www.w3.org/2000/svg}"


def _svg(page: str) -> ET.Element:
    start, end = page.index("<svg"), page.index("</svg>") + len("</svg>")
    return ET.fromstring(page[start:end])


def _line_points(svg: ET.Element, index: int) -> int:
    """How many points the line of series ``index`` joins."""
    group = next(element for element in svg.iter(f"{SVG}g") if element.get("id") == f"series-{index}")
    path = next(group.iter(f"{SVG}path"))
    return len(re.findall(r"[ML] ", path.attrib["d"]))


def test_chart_has_one_line_per_series() -> None:
    rows = [
        {"step": i, "train_nll": 3.0 - 0.1 * i, "eval_nll": (3.1 - 0.1 * i) if i % 5 == 0 else None} for i in range(20)
    ]
    page = metrics_chart_html(rows, ["train_nll", "eval_nll"], "loss")
    svg = _svg(page)
    assert _line_points(svg, 0) == 20
    assert _line_points(svg, 1) == 4
    assert "train_nll" in page  # the legend keeps its text (searchable)
    assert "eval_nll" in page


def test_chart_skips_non_finite_and_handles_empty() -> None:
    rows: list[dict[str, object]] = [{"step": 0, "x": math.nan}, {"step": 1, "x": 1.0}, {"step": 2, "x": math.inf}]
    rows.append({"step": 3, "x": True})  # a flag is not a measurement
    assert chart_series(rows, "x") == ([1.0], [1.0])
    assert _line_points(_svg(metrics_chart_html(rows, ["x"], "t")), 0) == 1
    assert "no data" in metrics_chart_html([], ["x"], "<t>")
    assert "&lt;t&gt;" in metrics_chart_html([], ["x"], "<t>")


def test_chart_is_deterministic() -> None:
    rows = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(50)]
    assert metrics_chart_html(rows, ["loss"], "t") == metrics_chart_html(rows, ["loss"], "t")


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = (
        "import sys, tinkerflow.shell.io.run, tinkerflow.shell.io.charts as c; "
        "assert 'matplotlib' not in sys.modules; c.metrics_chart_html([], ['x'], 't'); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
