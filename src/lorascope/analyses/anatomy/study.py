"""The anatomy on the study side: its config block, its jobs and its rule's slice.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.study.parse import check_selection, names_or_none
from lorascope.study.spec import Selection, Study


@dataclass(frozen=True)
class AnatomySpec(Selection):
    """LoRA update anatomy per (layer, role): Frobenius and spectral norm, effective rank."""


def parse(raw: Mapping[str, Any], study: Study) -> AnatomySpec:
    """``analyses.anatomy`` (defaults filled by the schema) checked against the study."""
    check_selection(raw["models"], raw["adapters"], study.models, "analyses.anatomy")
    return AnatomySpec(names_or_none(raw["models"]), names_or_none(raw["adapters"]))


def jobs(study: Study) -> list[dict[str, str]]:
    """The wildcards (model, adapter) of every run whose LoRA update anatomy is asked for."""
    spec = study.analysis("anatomy")
    if spec is None:
        return []
    return [{"model": m.name, "adapter": name} for m in study.models.values()
            for name in spec.selects(m)]


def anatomy(study: Study, model: str, adapter: str) -> dict[str, Any]:
    """The ``anatomy`` rule's slice: nothing but which run (the maths has no settings)."""
    return {"model": model, "adapter": adapter}


SLICES = {"anatomy": anatomy}


def report_params(study: Study) -> dict[str, Any] | None:
    """The anatomy section reads everything it needs from the summary."""
    return None
