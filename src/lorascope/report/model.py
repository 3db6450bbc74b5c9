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


def format_value(value: float | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{decimals}f}"


@dataclass
class Cell:
    """One table cell: a value, optionally a step printed as ``(150)`` and a significance flag."""

    value: float | None = None
    step: int | None = None
    significant: bool = False
    paper: bool = False
    # Extra data kept for the CSV (delta, p values, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self, decimals: int, marker: str = SIGNIFICANT) -> str:
        """The cell as plain text, e.g. ``0.7514 (150)`` or ``0.4341†``."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return MISSING
        out = format_value(self.value, decimals)
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


@dataclass
class Row:
    key: str
    label: str
    cells: list[Cell]
    baseline: bool = False  # the first-stage (BM25) row


@dataclass
class Table:
    """One of the paper's tables on one split."""

    key: str  # file stem: table1, table1_dl20, ...
    number: int
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
