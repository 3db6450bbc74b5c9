"""Pairs of a sweep's ablations tested against each other (``sweeps.<s>.compare``).

The evaluate stage tests every ablation against the sweep's full adapter. A claim such as the
paper's "MHA-only above MLP-only, above no LoRA" is about pairs of ablations instead: here each
pair is tested per query with the study's paired test, corrected over the sweep's pairs (per
measure). ``summarize`` computes them from the sweeps' per-query metrics; the report prints
them under the table that shows the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from lorascope.core.contracts import Contract
from lorascope.core.metrics import aggregate
from lorascope.core.stats import compare, correct

#: Summary table name (``summary/contrasts.parquet``).
NAME = "contrasts"
#: One row per (job, pair, measure); ``delta`` = value_a - value_b.
CONTRASTS = Contract(
    NAME,
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("step", pa.int32()),
            ("sweep", pa.string()),
            ("split", pa.string()),
            ("a", pa.string()),
            ("b", pa.string()),
            ("measure", pa.string()),
            ("value_a", pa.float64()),
            ("value_b", pa.float64()),
            ("delta", pa.float64()),
            ("p_value", pa.float64()),
            ("p_adjusted", pa.float64()),
            ("significant", pa.bool_()),
            ("queries", pa.int32()),
        ]
    ),
)


def contrast_rows(
    job: Mapping[str, Any],
    metrics: Any,
    pairs: Sequence[Sequence[str]],
    significance: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """CONTRASTS rows of one sweep job from its per-query metrics (a METRICS frame): each
    pair tested on every measure, the p-values corrected over the pairs per measure."""
    rows = []
    for measure, frame in metrics.groupby("measure", sort=True):
        per_query = {name: dict(zip(g["qid"], g["value"]))
                     for name, g in frame.groupby("ablation")}
        missing = sorted({n for pair in pairs for n in pair} - set(per_query))
        if missing:
            raise ValueError(f"sweep {job['sweep']} on {job['split']}: no per-query {measure} "
                             f"of {', '.join(map(repr, missing))} to compare")
        keys = {(a, b): f"{a}\x00{b}" for a, b in pairs}  # correct() names tests by str
        raw = {keys[a, b]: compare(per_query[a], per_query[b], significance["test"])
               for a, b in pairs}
        adjusted = correct(raw, significance["correction"])
        means = aggregate(per_query)  # the same means as the evaluations table's
        for a, b in pairs:
            key = keys[a, b]
            rows.append({
                **{k: job[k] for k in ("model", "adapter", "step", "sweep", "split")},
                "a": a, "b": b, "measure": measure, "value_a": means[a], "value_b": means[b],
                "delta": means[a] - means[b], "p_value": raw[key], "p_adjusted": adjusted[key],
                "significant": adjusted[key] < significance["alpha"],
                "queries": len(per_query[a]),
            })
    return rows
