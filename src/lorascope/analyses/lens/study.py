"""The lens on the study side: its config block, its jobs, its rule's slice, its report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.study import slices
from lorascope.study.parse import analysis_splits, check_selection, names_or_none
from lorascope.study.spec import Selection, Study


@dataclass(frozen=True)
class LensSpec(Selection):
    """Relevance lens per layer of the base model and of every checkpoint, on ``splits``."""

    splits: tuple[str, ...] = ()


def parse(raw: Mapping[str, Any], study: Study) -> LensSpec:
    """``analyses.lens`` (defaults filled by the schema) checked against the study."""
    key = "analyses.lens"
    check_selection(raw["models"], raw["adapters"], study.models, key)
    names = analysis_splits(raw, study, key)
    return LensSpec(names_or_none(raw["models"]), names_or_none(raw["adapters"]), tuple(names))


def jobs(study: Study) -> list[dict[str, str]]:
    """The wildcards (model, adapter, split) of every relevance-lens job."""
    return study.run_split_jobs("lens")


def lens(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The ``lens`` rule's slice: measures, scoring, the readable-from ε."""
    ev = study.evaluation
    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "metrics": list(ev.metrics),
        "scoring": slices.scoring(study, model),
        "epsilon": ev.convergence.epsilon,
    }


SLICES = {"lens": lens}


def report_params(study: Study) -> dict[str, Any] | None:
    """What the lens section of the report needs from the config."""
    if study.analysis("lens") is None:
        return None
    conv = study.evaluation.convergence
    return {"measure": conv.measure, "epsilon": conv.epsilon}
