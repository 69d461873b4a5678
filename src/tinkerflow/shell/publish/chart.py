"""The card's chart: chosen metrics against ``step`` as a PNG, drawn by matplotlib's Agg canvas. (Shell.)

No ``pyplot`` (no display, no global state); the PNG carries no date or software version, so the same rows give the
same bytes on one matplotlib version.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Final

from tinkerflow.shell.io.charts import chart_series

__all__ = ["curves_png"]

_SIZE_IN: Final = (7.2, 3.6)
_DPI: Final = 100
_MARKERS_BELOW: Final = 40


def curves_png(rows: Sequence[Mapping[str, object]], keys: Sequence[str], title: str) -> bytes | None:
    """A PNG line chart of ``keys`` against ``step`` (one line per key with data), or ``None`` when no key has any
    finite value."""
    series = [(key, *chart_series(rows, key)) for key in keys]
    series = [(key, steps, values) for key, steps, values in series if steps]
    if not series:
        return None
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"font.size": 9}):
        figure = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        for key, steps, values in series:
            marker = "o" if len(steps) < _MARKERS_BELOW else None
            axes.plot(steps, values, marker=marker, markersize=3, linewidth=1.5, label=key)
        axes.legend(loc="best")
        axes.grid(visible=True, alpha=0.3)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
