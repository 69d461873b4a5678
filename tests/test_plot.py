from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from tinkerflow.shell.io.charts import metrics_chart_html


def _svg(page: str) -> ET.Element:
    start, end = page.index("<svg"), page.index("</svg>") + len("</svg>")
    return ET.fromstring(page[start:end])


def test_chart_has_one_line_per_series() -> None:
    rows = [
        {"step": i, "train_nll": 3.0 - 0.1 * i, "eval_nll": (3.1 - 0.1 * i) if i % 5 == 0 else None} for i in range(20)
    ]
    page = metrics_chart_html(rows, ["train_nll", "eval_nll"], "loss")
    svg = _svg(page)
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    assert len(lines[0].attrib["points"].split()) == 20
    assert len(lines[1].attrib["points"].split()) == 4


def test_chart_skips_non_finite_and_handles_empty() -> None:
    rows = [{"step": 0, "x": math.nan}, {"step": 1, "x": 1.0}]
    assert len(_svg(metrics_chart_html(rows, ["x"], "t")).findall("{http://www.w3.org/2000/svg}polyline")) == 1
    assert "no data" in metrics_chart_html([], ["x"], "<t>")
    assert "&lt;t&gt;" in metrics_chart_html([], ["x"], "<t>")
