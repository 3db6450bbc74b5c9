"""The registered analyses, in report order: one line each (see :mod:`lorascope.analyses`).

The summary and the report iterate over :data:`ANALYSES`; the study parses each one's config
block; the command line adds each one's subcommands; the workflow includes each one's rule
file. The parts are loaded by name when they are used (:func:`load`), so a stage imports only
what it runs, and a rule's code version names them explicitly (:func:`modules`).
"""

from __future__ import annotations

import importlib
from typing import Any

from lorascope.analyses import anatomy, boundary, compression, heads, lens, patching, probing
from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

ANALYSES: tuple[Analysis, ...] = (
    boundary.ANALYSIS,
    lens.ANALYSIS,
    patching.ANALYSIS,
    probing.ANALYSIS,
    heads.ANALYSIS,
    anatomy.ANALYSIS,
    compression.ANALYSIS,
)


def get(name: str) -> Analysis:
    """The registered analysis ``name``."""
    for analysis in ANALYSES:
        if analysis.name == name:
            return analysis
    raise KeyError(f"no analysis {name!r} (registered: {', '.join(a.name for a in ANALYSES)})")


def load(module: str, attribute: str) -> Any:
    """``attribute`` of ``module`` (an analysis part, imported on first use)."""
    return getattr(importlib.import_module(module), attribute)


def modules(part: str) -> list[str]:
    """The module names of one part of every analysis that has it (for code versions)."""
    return [a.module(part) for a in ANALYSES if part in a.parts()]


def summary_tables() -> dict[str, Contract]:
    """Every table of the study summary: the paper's, then each analysis's, by name."""
    from lorascope.core import contracts
    from lorascope.core.names import PAPER_SUMMARY_TABLES

    from lorascope.core.contrasts import CONTRASTS

    tables = {name: contracts.CONTRACTS[name] for name in PAPER_SUMMARY_TABLES}
    tables[CONTRASTS.name] = CONTRASTS  # the sweeps' pairwise tests (Tables 3-4)
    for analysis in ANALYSES:
        tables.update(analysis.tables)
    return tables
