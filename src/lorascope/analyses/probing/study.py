"""The probes on the study side: their config block, jobs, rule slice and report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.study import slices
from lorascope.study.parse import analysis_splits, check_selection, check_steps, names_or_none
from lorascope.study.spec import ConfigError, Model, Selection, Study, read_steps, resolve_steps

KEY = "analyses.probing"


@dataclass(frozen=True)
class ProbingSpec(Selection):
    """Per-layer IR-feature probes of the base model and checkpoints ``steps`` (None: every
    checkpoint) of the selected runs, on ``splits``; the rest is the probes' settings."""

    splits: tuple[str, ...] = ()
    steps: tuple[int | str, ...] | None = None
    queries: int | None = None
    depth: int | None = None
    folds: int = 5
    inner_folds: int = 3
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
    idf: str = "shipped"
    threshold: float = 0.5

    def steps_of(self, model: Model, adapter: str) -> list[int]:
        """The checkpoint steps probed for one run (the base, step 0, comes on top)."""
        return resolve_steps(self.steps, model.steps_of(adapter), default_all=True)


def parse(raw: Mapping[str, Any], study: Study) -> ProbingSpec:
    """``analyses.probing`` (defaults filled by the schema) checked against the study."""
    chosen = check_selection(raw["models"], raw["adapters"], study.models, KEY)
    names = analysis_splits(raw, study, KEY)
    spec = ProbingSpec(
        names_or_none(raw["models"]), names_or_none(raw["adapters"]), tuple(names),
        steps=tuple(raw["steps"]) if raw["steps"] is not None else None,
        queries=raw["queries"], depth=raw["depth"], folds=raw["folds"],
        inner_folds=raw["inner_folds"], alphas=tuple(float(a) for a in raw["alphas"]),
        idf=raw["idf"], threshold=float(raw["threshold"]),
    )
    check_steps(spec.steps, chosen, spec, f"{KEY}.steps")
    if spec.queries is not None and spec.queries < spec.folds:
        raise ConfigError(f"config key '{KEY}.queries': {spec.queries} queries cannot fill "
                          f"{KEY}.folds = {spec.folds} query-grouped folds")
    if spec.queries is not None and len(spec.alphas) > 1:
        # the largest outer test fold holds at least ceil(queries / folds) queries; the stage
        # checks the real folds (the split may hold fewer judged queries)
        train = spec.queries - math.ceil(spec.queries / spec.folds)
        if train < spec.inner_folds:
            raise ConfigError(
                f"config key '{KEY}.inner_folds': {spec.inner_folds} query-grouped inner folds "
                f"need {spec.inner_folds} queries in every outer training fold, but "
                f"{KEY}.queries = {spec.queries} in {KEY}.folds = {spec.folds} folds leaves "
                f"at most {train} (lower inner_folds or folds, raise queries, or give one "
                "alpha)")
    return spec


def jobs(study: Study) -> list[dict[str, str]]:
    """The wildcards (model, adapter, split) of every probing job."""
    return study.run_split_jobs("probing")


def checkpoint_steps(study: Study, model: str, adapter: str) -> list[int]:
    """The checkpoints a probing job reads: the probed ones and the last (whose head the
    base model is read with), in step order."""
    spec: ProbingSpec = study.analysis("probing")
    m = study.models[model]
    return read_steps(spec.steps_of(m, adapter), m.steps_of(adapter))


def probing(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The ``probing`` rule's slice: the probed steps, the subset, the probes' settings."""
    spec: ProbingSpec = study.analysis("probing")
    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "steps": spec.steps_of(study.models[model], adapter),
        "queries": spec.queries,
        "depth": spec.depth,
        "folds": spec.folds,
        "inner_folds": spec.inner_folds,
        "alphas": list(spec.alphas),
        "idf": spec.idf,
        "threshold": spec.threshold,
        "scoring": slices.scoring(study, model),
    }


SLICES = {"probing": probing}


def report_params(study: Study) -> dict[str, Any] | None:
    """What the probing section of the report needs from the config."""
    spec = study.analysis("probing")
    if spec is None:
        return None
    return {"threshold": spec.threshold}
