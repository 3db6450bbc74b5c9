"""Shared matplotlib plumbing of the report's figures: the lazily imported ``pyplot`` (``Agg``
backend, the report's style), PNG + PDF bytes of a finished figure, panel grids and labels."""

from __future__ import annotations

import io
import math
import re
from typing import Any

from lorascope.report.model import MECHANICS, Figure

DPI = 110


def plt() -> Any:
    """``matplotlib.pyplot`` on the ``Agg`` backend with the report's style."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.hashsalt": "lorascope",
        }
    )
    return pyplot


def finish(fig: Any, key: str, title: str, caption: str, sources: list[str]) -> Figure:
    """Render ``fig`` to PNG and PDF bytes (no timestamps), close it, wrap it as a Figure."""
    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(
        pdf, format="pdf", bbox_inches="tight",
        metadata={"Creator": None, "Producer": None, "CreationDate": None},
    )
    plt().close(fig)
    return Figure(key, title, caption, png.getvalue(), pdf.getvalue(), sources)


def grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) of a grid holding ``n`` panels."""
    cols = min(max_cols, max(n, 1))
    return math.ceil(n / cols), cols


def model_title(label: str, mechanics: bool) -> str:
    return f"{label} ({MECHANICS} mechanics only)" if mechanics else label


def slug(text: str) -> str:
    """A file-name-safe stem: ``Alpha_7B #1`` -> ``alpha-7b-1``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def axes(pyplot: Any, n: int, width: float = 4.0, height: float = 3.0, max_cols: int = 3,
         layout: str | None = None):
    """A figure with ``n`` panels in a grid (extra cells hidden) and the list of their axes;
    ``layout="constrained"`` for figures with a colour bar shared by the panels."""
    rows, cols = grid(n, max_cols)
    fig, ax = pyplot.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                              layout=layout)
    flat = list(ax.flat)
    for extra in flat[n:]:
        extra.set_visible(False)
    return fig, flat[:n]


def step_label(step: int) -> str:
    """A checkpoint's axis / row label: step 0 of the lens and anatomy is the base model."""
    return "base" if int(step) == 0 else str(int(step))
