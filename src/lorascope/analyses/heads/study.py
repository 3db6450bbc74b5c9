"""Head ablation on the study side: its config block, its jobs, its rule's slice and inputs, its
report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.study import slices
from lorascope.study.parse import analysis_splits, check_selection, check_steps, names_or_none
from lorascope.study.spec import Selection, Study, read_steps, resolve_steps

KEY = "analyses.heads"


@dataclass(frozen=True)
class HeadsSpec(Selection):
    """Every attention head ablated in turn for the base model and ``steps`` (``None``: the last
    checkpoint; ``"last"`` allowed in the list), on ``splits``, on the first ``queries`` judged
    queries x ``depth`` candidates of each (``None``: all)."""

    steps: tuple[int | str, ...] | None = None
    mode: str = "zero"
    splits: tuple[str, ...] = ()
    queries: int | None = None
    depth: int | None = None


def parse(raw: Mapping[str, Any], study: Study) -> HeadsSpec:
    """``analyses.heads`` (defaults filled by the schema) checked against the study: every
    listed step must be a checkpoint of every selected adapter."""
    chosen = check_selection(raw["models"], raw["adapters"], study.models, KEY)
    names = analysis_splits(raw, study, KEY)
    spec = HeadsSpec(names_or_none(raw["models"]), names_or_none(raw["adapters"]),
                     steps=tuple(raw["steps"]) if raw["steps"] is not None else None,
                     mode=raw["mode"], splits=tuple(names), queries=raw["queries"],
                     depth=raw["depth"])
    check_steps(spec.steps, chosen, spec, f"{KEY}.steps")
    return spec


def steps(study: Study, model: str, adapter: str) -> list[int]:
    """The checkpoint steps ablated for one run (besides the base model), ascending."""
    spec = study.analysis("heads")
    return resolve_steps(spec.steps, study.models[model].steps_of(adapter), default_all=False)


def checkpoints(study: Study, model: str, adapter: str) -> list[int]:
    """The checkpoints the job reads: the ablated steps and the last one (whose score head the
    base model uses)."""
    return read_steps(steps(study, model, adapter), study.models[model].steps_of(adapter))


def jobs(study: Study) -> list[dict[str, str]]:
    """The wildcards (model, adapter, split) of every head-ablation job."""
    return study.run_split_jobs("heads")


def heads(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The ``heads`` rule's slice: steps, mode, subset, measures, significance, scoring."""
    spec = study.analysis("heads")
    ev = study.evaluation
    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "steps": steps(study, model, adapter),
        "mode": spec.mode,
        "queries": spec.queries,
        "depth": spec.depth,
        "metrics": list(ev.metrics),
        "significance": dataclasses.asdict(ev.significance),
        "scoring": slices.scoring(study, model),
    }


SLICES = {"heads": heads}


def report_params(study: Study) -> dict[str, Any] | None:
    """What the heads section of the report needs from the config: its measure."""
    if study.analysis("heads") is None:
        return None
    return {"measure": study.evaluation.convergence.measure}
