"""Boundary pruning on the study side: its config block, its jobs, its rules' slices and its
report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.analyses.boundary import PRUNED_SWEEP
from lorascope.core.names import BOUNDARY
from lorascope.study import slices
from lorascope.study.parse import check_split_names, sweep_of_kind
from lorascope.study.plan import sweep_applies, sweep_step
from lorascope.study.spec import ConfigError, Study


@dataclass(frozen=True)
class BoundarySpec:
    """Boundary-layer pruning: choose b on a ``generate: boundary`` sweep, compare the pruned
    adapter (LoRA on layers 0..b only) with the full one on the test ``splits``."""

    sweep: str
    measure: str
    splits: tuple[str, ...]
    selection_split: str


def parse(raw: Mapping[str, Any], study: Study) -> BoundarySpec:
    """``analyses.boundary`` (defaults filled by the schema) checked against the study."""
    key = "analyses.boundary"
    evaluation, sweeps = study.evaluation, study.sweeps
    sweep = sweep_of_kind(sweeps, raw["sweep"], f"{key}.sweep", BOUNDARY)
    measure = raw["measure"] or evaluation.convergence.measure
    if measure not in evaluation.metrics:
        raise ConfigError(
            f"config key '{key}.measure': {measure!r} is not one of evaluation.metrics "
            f"({', '.join(evaluation.metrics)})"
        )
    names = raw["splits"]
    if names is None:
        selection = evaluation.convergence.split
        names = [s for s in study.splits if s != selection] or [selection]
    check_split_names(names, study.splits, f"{key}.splits")
    chooser = raw["selection_split"] or evaluation.convergence.split
    if chooser not in sweep.splits:
        raise ConfigError(
            f"config key '{key}.selection_split': b is chosen on split {chooser!r}, which "
            f"sweep {sweep.name!r} does not evaluate (its splits: {', '.join(sweep.splits)})"
        )
    return BoundarySpec(sweep=sweep.name, measure=measure, splits=tuple(names),
                        selection_split=chooser)


def runs(study: Study) -> list[tuple[str, str, int]]:
    """(model, adapter, step) of every run the boundary sweep covers (when pruning is asked)."""
    spec = study.analysis("boundary")
    if spec is None:
        return []
    sweep = study.sweeps[spec.sweep]
    return [(m.name, name, sweep_step(sweep, m, name)) for m in study.models.values()
            for name in sweep_applies(sweep, m)]


def jobs(study: Study) -> list[dict[str, object]]:
    """The wildcards (model, adapter, step, test split) of every pruned-vs-full comparison."""
    spec = study.analysis("boundary")
    return [{"model": m, "adapter": a, "step": step, "split": split}
            for m, a, step in runs(study) for split in spec.splits]


def selection(study: Study) -> dict[str, str]:
    """The sweep and split whose summary chooses b (the prune rule's input); placeholders when
    the study has no ``analyses.boundary`` (the rule then never runs)."""
    spec = study.analysis("boundary")
    if spec is None:
        return {"sweep": "none", "split": "none"}
    return {"sweep": spec.sweep, "split": spec.selection_split}


def prune_boundary(study: Study, model: str, adapter: str, step: int) -> dict[str, Any]:
    """Which boundary sweep chooses b, and by which measure."""
    spec = study.analysis("boundary")
    return {"model": model, "adapter": adapter, "step": step, "sweep": spec.sweep,
            "split": spec.selection_split, "measure": spec.measure}


def compare_boundary(study: Study, model: str, adapter: str, step: int, split: str
                     ) -> dict[str, Any]:
    """Pruned vs full on a test split: the evaluate slice (metrics, significance, scoring)."""
    out = slices.evaluate(study, model, adapter, step, study.analysis("boundary").sweep, split)
    del out["sweep_spec"]
    return {**out, "sweep": PRUNED_SWEEP}


SLICES = {"prune_boundary": prune_boundary, "compare_boundary": compare_boundary}


def report_params(study: Study) -> dict[str, Any] | None:
    """The boundary curve's sweep (``report.boundary_sweep``, else the first boundary sweep)
    and the selection rule, for the report's boundary section."""
    ev = study.evaluation
    name = study.raw["report"]["boundary_sweep"] or next(
        (s.name for s in study.sweeps.values() if s.generate == BOUNDARY), None)
    if name is None or name not in study.sweeps:
        return None
    sweep = study.sweeps[name]
    adapter = sweep.adapters[0] if sweep.adapters else slices.table1_adapter(study)
    return {"sweep": name, "adapter": adapter, "measure": ev.convergence.measure,
            "selection_split": ev.convergence.split}
