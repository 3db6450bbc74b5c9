"""The boundary analysis in the study summary: one ``boundary`` row per pruned-vs-full
comparison, and the comparison's metrics as ``evaluations`` rows (sweep ``boundary_pruned``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorascope.analyses.boundary import PRUNED, PRUNED_SWEEP


def collect(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows of every ``compare_boundary`` job. Each entry: the job's run fields (model,
    adapter, rank, targets, variant, step, split) and ``summary`` (its summary.json)."""
    from lorascope.summarize import JOB_FIELDS, evaluation_rows

    evaluations: list[dict[str, Any]] = []
    boundary: list[dict[str, Any]] = []
    for job in entries:
        summary = json.loads(Path(job["summary"]).read_text())
        fields = {**{k: job[k] for k in JOB_FIELDS if k != "sweep"}, "sweep": PRUNED_SWEEP}
        evaluations += evaluation_rows(fields, summary)
        boundary.append(boundary_row(job, summary))
    return {"evaluations": evaluations, "boundary": boundary}


def boundary_row(job: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The BOUNDARY row of one pruned-vs-full comparison (:mod:`.compare`)."""
    info = summary["boundary"]
    selection = info.get("selection") or {}
    # the selection summaries are .../eval/<run>/<sweep>/<split>/summary.json
    splits = [Path(src).parent.name for src in selection.get("sources") or []]
    full, pruned = summary["ablations"]["full"], summary["ablations"][PRUNED]
    return {
        "model": job["model"],
        "adapter": job["adapter"],
        "step": job["step"],
        "split": job["split"],
        "selection_split": ",".join(str(s) for s in splits),
        "measure": selection.get("measure"),
        "selection_value": selection.get("value"),
        "b": info["b"],
        "num_layers": info["layers"],
        "params_removed_fraction": info["params_removed_fraction"],
        "lora_params_full": full.get("lora_params"),
        "lora_params_pruned": pruned.get("lora_params"),
        "pairs_per_second_full": full.get("pairs_per_second"),
        "pairs_per_second_pruned": pruned.get("pairs_per_second"),
        "speedup": info.get("speedup"),
    }
