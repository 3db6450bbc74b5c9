"""The ``evaluate_first_stage`` stage: the first-stage (e.g. BM25) ranking as a baseline row.

Scores the candidates of a split in their first-stage order (rank 1 first, so ties in the
retriever's scores cannot reorder them) and writes per-query metrics plus a JSON summary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope import fileio, metrics, provenance
from lorascope.contracts import CANDIDATES, METRICS, QRELS, read_table, write_table
from lorascope.data.common import split_paths

log = logging.getLogger(__name__)
ABLATION = "first_stage"


def evaluate(
    params: Mapping[str, Any], split_dir: str | Path, metrics_path: str | Path, summary_path: str | Path
) -> dict[str, float]:
    paths = split_paths(Path(split_dir))
    cands = read_table(paths["candidates"], CANDIDATES, columns=["qid", "docid", "rank"])
    qrels = read_table(paths["qrels"], QRELS)
    run = zip(
        cands.column("qid").to_pylist(),
        cands.column("docid").to_pylist(),
        (-float(r) for r in cands.column("rank").to_pylist()),
    )
    values = metrics.per_query(qrels, run, params["metrics"])
    means = metrics.aggregate(values)
    record = provenance.record("evaluate_first_stage", params)
    write_table(metrics_path, metrics.to_rows(values, ABLATION), METRICS, record)
    n_queries = len(next(iter(values.values())))
    fileio.write_json(
        summary_path,
        {"split": params["split"], "queries": n_queries, "metrics": means, "provenance": record},
    )
    log.info("first stage on %s (%d queries): %s", params["split"], n_queries, means)
    return means
