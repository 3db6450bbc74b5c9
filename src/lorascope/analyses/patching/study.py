"""The patching analysis on the study side: its config block, its jobs, its rule's slice, its
report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.study import slices
from lorascope.study.parse import analysis_splits, check_selection, check_steps, names_or_none
from lorascope.study.spec import ConfigError, Selection, Study, read_steps, resolve_steps

KEY = "analyses.patching"


@dataclass(frozen=True)
class PatchingSpec(Selection):
    """Perturbations + activation patching of the base model and ``steps`` (None = the last
    checkpoint of each run) on ``splits``."""

    splits: tuple[str, ...] = ()
    steps: tuple[int | str, ...] | None = None
    queries: int = 10
    depth: int = 10
    perturbations: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    filler: str = "the"
    tiny_delta: float = 0.01


def parse(raw: Mapping[str, Any], study: Study) -> PatchingSpec:
    """``analyses.patching`` (defaults filled by the schema) checked against the study."""
    chosen = check_selection(raw["models"], raw["adapters"], study.models, KEY)
    names = analysis_splits(raw, study, KEY)
    spec = PatchingSpec(
        names_or_none(raw["models"]), names_or_none(raw["adapters"]), tuple(names),
        steps=tuple(raw["steps"]) if raw["steps"] is not None else None,
        queries=raw["queries"], depth=raw["depth"],
        perturbations=tuple(raw["perturbations"]), heads=tuple(raw["heads"]),
        filler=raw["filler"], tiny_delta=float(raw["tiny_delta"]),
    )
    for i, name in enumerate(spec.heads):
        if name not in spec.perturbations:
            raise ConfigError(f"config key '{KEY}.heads[{i}]': {name!r} is not one of "
                              f"{KEY}.perturbations ({', '.join(spec.perturbations)})")
    check_steps(spec.steps, chosen, spec, f"{KEY}.steps")
    return spec


def jobs(study: Study) -> list[dict[str, str]]:
    """The wildcards (model, adapter, split) of every patching job."""
    return study.run_split_jobs("patching")


def patched_steps(study: Study, model: str, adapter: str) -> list[int]:
    """The checkpoint steps patched for one run (besides the base model), ascending."""
    spec = study.analysis("patching")
    return resolve_steps(spec.steps, study.models[model].steps_of(adapter), default_all=False)


def checkpoints(study: Study, model: str, adapter: str) -> list[int]:
    """The checkpoints the job reads: the patched steps and the last one (whose score head the
    base model uses)."""
    return read_steps(patched_steps(study, model, adapter),
                      study.models[model].steps_of(adapter))


def patching(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The ``patching`` rule's slice: the steps (resolved), the subset, the perturbations,
    scoring."""
    spec = study.analysis("patching")
    steps = patched_steps(study, model, adapter)
    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "steps": list(steps),
        "queries": spec.queries,
        "depth": spec.depth,
        "perturbations": list(spec.perturbations),
        "heads": list(spec.heads),
        "filler": spec.filler,
        "tiny_delta": spec.tiny_delta,
        "scoring": slices.scoring(study, model),
    }


SLICES = {"patching": patching}


def report_params(study: Study) -> dict[str, Any] | None:
    """The patching section reads everything it needs from its tables (``tiny`` included)."""
    return None
