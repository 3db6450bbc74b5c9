"""The report as data: tables, figures and notes that every renderer (Markdown, LaTeX, HTML)
turns into its own format. Nothing here knows an output format.

Text fields may hold inline code spans written with backticks (```layers```); renderers turn
them into their format's code markup and escape everything else. Markers (significance,
"mechanics only") are flags on the data, never characters inside strings, so that each format
can typeset them properly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SIGNIFICANT = "†"
MECHANICS = "‡"
MISSING = "–"

SIGNIFICANCE_NOTE = (
    f"{SIGNIFICANT} the change against the full adapter of the same run is significant "
    "(paired per-query test, p-value adjusted for multiple comparisons)."
)
MECHANICS_NOTE = (
    f"{MECHANICS} mechanics only: a small model that exercises the pipeline; its numbers do not "
    "test the paper's claims."
)


#: How a column prints its numbers (:attr:`Column.fmt`).
FORMATS = ("value", "delta", "p", "int", "percent", "ratio", "rank", "text")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: float | None, decimals: int, fmt: str = "value") -> str:
    """A number as a column of format ``fmt`` prints it.

    ``value``: ``decimals`` places (``0.5123``); ``delta``: signed (``+0.0120``, ``-0.0300``);
    ``p``: a p-value (``0.004``, ``<0.001``); ``int``: ``12``; ``percent``: a fraction as
    ``37.5%``; ``ratio``: ``1.32×``; ``rank``: two places (an effective rank, ``3.41``);
    ``text``: the value as it is.
    """
    if _missing(value):
        return MISSING
    if fmt == "value":
        return f"{value:.{decimals}f}"
    if fmt == "delta":
        text = f"{value:+.{decimals}f}"
        return text.replace("-0." + "0" * decimals, "+0." + "0" * decimals)
    if fmt == "p":
        return "<0.001" if value < 0.001 else f"{value:.3f}"
    if fmt == "int":
        return str(int(round(value)))
    if fmt == "percent":
        return f"{100 * value:.1f}%"
    if fmt == "ratio":
        return f"{value:.2f}×"
    if fmt == "rank":
        return f"{value:.2f}"
    if fmt == "text":
        return str(value)
    raise ValueError(f"unknown cell format {fmt!r} (formats: {', '.join(FORMATS)})")


@dataclass
class Cell:
    """One table cell: a value, optionally a step printed as ``(150)`` and a significance flag."""

    value: float | None = None
    step: int | None = None
    significant: bool = False
    paper: bool = False
    # Extra data kept for the CSV (delta, p values, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    # Text shown instead of the formatted value (an adapter name, "3 of 8"); the value, if
    # any, still goes to the CSV.
    label: str | None = None

    def text(self, decimals: int, marker: str = SIGNIFICANT, fmt: str = "value") -> str:
        """The cell as plain text, e.g. ``0.7514 (150)`` or ``0.4341†``."""
        if self.label is not None:
            out = self.label
        elif _missing(self.value):
            return MISSING
        else:
            out = format_value(self.value, decimals, fmt)
        if self.step is not None:
            out += f" ({self.step})"
        if self.significant:
            out += marker
        return out


@dataclass
class Column:
    """One value column: which model's which measure, reproduced or the paper's."""

    model: str
    group: str  # the model's display label (the column group)
    label: str  # the sub-column label (a measure, "reproduced", "paper")
    measure: str
    mechanics_only: bool = False
    paper: bool = False
    fmt: str = "value"  # how its numbers print: one of FORMATS


@dataclass
class Row:
    key: str
    label: str
    cells: list[Cell]
    baseline: bool = False  # the first-stage (BM25) row
    mechanics_only: bool = False  # the row is a mechanics-only model (tables with model rows)


@dataclass
class Table:
    """One of the paper's tables on one split, or a table of the "beyond the paper" sections
    (``number`` None; ``key`` starts with ``table`` so that a re-render replaces it)."""

    key: str  # file stem: table1, table1_dl20, table-boundary, ...
    number: int | None
    title: str
    split: str
    caption: str
    row_header: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    companion: bool = False

    def groups(self) -> list[tuple[str, bool, int]]:
        """Consecutive column groups as (label, mechanics_only, span)."""
        out: list[tuple[str, bool, int]] = []
        for col in self.columns:
            if out and out[-1][0] == col.group:
                label, mech, span = out[-1]
                out[-1] = (label, mech, span + 1)
            else:
                out.append((col.group, col.mechanics_only, 1))
        return out

    @property
    def grouped(self) -> bool:
        """Whether the header needs two levels (a model spans several sub-columns)."""
        return any(span > 1 for _, _, span in self.groups())

    def cell(
        self, row_key: str, model: str, measure: str | None = None, paper: bool = False
    ) -> Cell:
        """Look a cell up by row key, model and (optionally) measure; for tests and callers."""
        row = next(r for r in self.rows if r.key == row_key)
        for col, cell in zip(self.columns, row.cells):
            wanted = measure is None or col.measure == measure
            if col.model == model and col.paper == paper and wanted:
                return cell
        raise KeyError((row_key, model, measure, paper))


@dataclass
class Figure:
    key: str  # file stem under figures/
    title: str
    caption: str
    png: bytes = b""
    pdf: bytes = b""
    sources: list[str] = field(default_factory=list)


@dataclass
class Omitted:
    """A table or figure the study has no results for: rendered as one line."""

    key: str
    note: str


@dataclass
class Section:
    title: str
    anchor: str
    items: list[Table | Figure | Omitted | str] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    decimals: int
    sections: list[Section]
    provenance: list[tuple[str, list[tuple[str, str]]]]  # (heading, [(key, value), ...])
    notes: list[str] = field(default_factory=list)

    def tables(self) -> list[Table]:
        return [i for s in self.sections for i in s.items if isinstance(i, Table)]

    def figures(self) -> list[Figure]:
        return [i for s in self.sections for i in s.items if isinstance(i, Figure)]

    def omitted(self) -> list[Omitted]:
        return [i for s in self.sections for i in s.items if isinstance(i, Omitted)]
