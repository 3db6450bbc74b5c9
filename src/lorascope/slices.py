"""Each workflow rule's config slice: exactly the values its output depends on.

The Snakemake rules pass these (as sorted-key JSON strings) in ``params:``, so Snakemake's
"params changed" trigger reruns a job when, and only when, its own slice changed. Keeping them
here, in one tested place, means the rules never reach into the config themselves.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lorascope.config import Study


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a slice."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def train_data(study: Study) -> dict[str, Any]:
    return {
        "train": dataclasses.asdict(study.train),
        "seed": study.seed,
        "holdout_queries": sorted(s.queries for s in study.holdout_splits() if s.queries),
    }


def split_data(study: Study, split: str) -> dict[str, Any]:
    spec = dataclasses.asdict(study.splits[split])
    spec.pop("name")
    return {"split": spec, "seed": study.seed}


def first_stage(study: Study, split: str) -> dict[str, Any]:
    return {"split": split, "metrics": list(study.metrics)}
