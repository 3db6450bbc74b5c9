"""The ``evaluate_first_stage`` stage: the baselines every table shows.

Scores the candidates of a split in their first-stage order (rank 1 first, so ties in the
retriever's scores cannot reorder them), and the floor a reranker must beat: a random
reordering of the same candidates (per-query mean over seeded shuffles). Writes per-query
metrics (ablations ``first_stage`` and ``random``), a JSON summary and the TREC run of the
first-stage ranking as it was scored (``first_stage.run`` beside the metrics unless named,
tagged ``first_stage.<split>``): its score is minus the first-stage rank, the value the
metrics order by, so trec_eval on it gives the reported first-stage row exactly; the random
floor, a mean over shuffles, has no single run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, metrics, provenance, trec
from lorascope.core.contracts import CANDIDATES, METRICS, QRELS, read_table, write_table
from lorascope.core.names import FIRST_STAGE, RANDOM
from lorascope.data.splits import check_not_empty, split_paths

log = logging.getLogger(__name__)

STAGE = "evaluate_first_stage"
RANDOM_SHUFFLES = 20


def random_floor(
    qrels, qids: list[str], docids: list[str], measures: list[str], shuffles: int = RANDOM_SHUFFLES
) -> dict[str, dict[str, float]]:
    """Per-query metrics of a random reordering of the candidates, averaged over seeded
    shuffles (seed i for shuffle i: the same numbers on every run)."""
    import random

    by_query: dict[str, list[str]] = {}
    for qid, docid in zip(qids, docids):
        by_query.setdefault(qid, []).append(docid)
    total: dict[str, dict[str, float]] = {}
    for seed in range(shuffles):
        rng = random.Random(seed)
        run = []
        for qid in sorted(by_query):
            order = list(by_query[qid])
            rng.shuffle(order)
            run += [(qid, docid, -float(i)) for i, docid in enumerate(order)]
        for name, by_q in metrics.per_query(qrels, run, measures).items():
            for qid, value in by_q.items():
                total.setdefault(name, {})[qid] = total.get(name, {}).get(qid, 0.0) + value / shuffles
    return total


def evaluate_first_stage(
    params: Mapping[str, Any],
    split_dir: str | Path,
    metrics_path: str | Path,
    summary_path: str | Path,
    run_path: str | Path | None = None,
) -> dict[str, float]:
    """The stage: the split's first-stage ranking and its random floor, per query and mean,
    and the ranking's TREC run (``run_path``, by default ``first_stage.run`` beside
    ``metrics_path``)."""
    tag = trec.run_tag(FIRST_STAGE, params["split"])
    run_path = (Path(metrics_path).with_name(f"{FIRST_STAGE}{trec.RUN_SUFFIX}")
                if run_path is None else Path(run_path))
    paths = split_paths(Path(split_dir))
    cands = check_not_empty(read_table(paths["candidates"], CANDIDATES,
                                       columns=["qid", "docid", "rank"]),
                            paths["candidates"], "candidates")
    qrels = check_not_empty(read_table(paths["qrels"], QRELS), paths["qrels"], "judgements")
    run = list(zip(
        cands.column("qid").to_pylist(),
        cands.column("docid").to_pylist(),
        (-float(r) for r in cands.column("rank").to_pylist()),
    ))
    values = metrics.per_query(qrels, run, params["metrics"])
    means = metrics.aggregate(values)
    qids, docids = cands.column("qid").to_pylist(), cands.column("docid").to_pylist()
    floor = random_floor(qrels, qids, docids, params["metrics"])
    record = provenance.record(STAGE, params, random_shuffles=RANDOM_SHUFFLES)
    rows = metrics.to_rows(values, FIRST_STAGE)
    for key, column in metrics.to_rows(floor, RANDOM).items():
        rows[key] += column
    write_table(metrics_path, rows, METRICS, record)
    trec.write_run(run_path, {(qid, docid): score for qid, docid, score in run}, tag)
    n_queries = len(next(iter(values.values())))
    fileio.write_json(
        summary_path,
        {
            "split": params["split"],
            "queries": n_queries,
            "metrics": means,
            RANDOM: metrics.aggregate(floor),
            "provenance": record,
        },
    )
    log.info("first stage on %s (%d queries): %s", params["split"], n_queries, means)
    return means
