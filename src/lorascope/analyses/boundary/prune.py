"""The ``prune_boundary`` stage: choose ``b`` on the boundary sweep's summaries
(:mod:`.selection`) and export the adapter pruned to layers ``0..b`` (:mod:`.export`), with
``selection.json`` beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorascope.analyses.boundary.export import base_info, export_pruned
from lorascope.analyses.boundary.selection import BoundaryError, select_boundary


def prune_boundary(
    params: Mapping[str, Any],
    boundary_summary: str | Path | Sequence[str | Path],
    adapter_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Select ``b`` from the boundary sweep's validation summaries and export the pruned
    adapter into ``out_dir`` (with ``selection.json``). Returns the pruned adapter's manifest.

    ``params``: ``{measure: "nDCG@10"}`` (required) plus any identifying fields (model,
    adapter, step, sweep), recorded in the provenance.
    """
    measure = params.get("measure")
    if not isinstance(measure, str) or not measure:
        raise BoundaryError("prune params: 'measure' must be a metric name such as 'nDCG@10'")
    _, _, depth = base_info(Path(base_dir))
    selection = select_boundary(boundary_summary, measure, num_layers=depth)
    return export_pruned(adapter_dir, base_dir, selection.b, out_dir, params=params,
                         selection=selection)
