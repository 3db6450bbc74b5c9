"""Ranking metrics with ir-measures, trec_eval conventions.

Per-query values for every query in the qrels: a query the run does not rank scores 0 (as
``trec_eval -c``), so aggregates are means over all judged queries of the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean

import pyarrow as pa


def parse_measures(names: Sequence[str]) -> list:
    import ir_measures

    return [ir_measures.parse_measure(name) for name in names]


def per_query(
    qrels: pa.Table, run: Iterable[tuple[str, str, float]], measures: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{measure name: {qid: value}}`` over all queries of ``qrels``.

    ``run`` yields ``(qid, docid, score)``; higher scores rank first. Names are returned as
    given in ``measures`` (so ``RR(rel=2)`` stays ``RR(rel=2)``).
    """
    import ir_measures

    parsed = parse_measures(measures)
    by_repr = {str(m): name for m, name in zip(parsed, measures)}
    qrel_rows = [
        ir_measures.Qrel(q, d, int(r))
        for q, d, r in zip(
            qrels.column("qid").to_pylist(),
            qrels.column("docid").to_pylist(),
            qrels.column("relevance").to_pylist(),
        )
    ]
    judged = sorted({row.query_id for row in qrel_rows})
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(judged, 0.0) for name in measures}
    scored = [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in run]
    for metric in ir_measures.iter_calc(parsed, qrel_rows, scored):
        if metric.query_id in values[by_repr[str(metric.measure)]]:
            values[by_repr[str(metric.measure)]][metric.query_id] = float(metric.value)
    return values


def aggregate(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over queries, per measure."""
    return {name: fmean(by_q.values()) if by_q else float("nan") for name, by_q in values.items()}


def to_rows(values: Mapping[str, Mapping[str, float]], ablation: str) -> dict[str, list]:
    """Per-query values as columns of the METRICS contract."""
    cols: dict[str, list] = {"ablation": [], "qid": [], "measure": [], "value": []}
    for name, by_q in values.items():
        for qid, value in sorted(by_q.items()):
            cols["ablation"].append(ablation)
            cols["qid"].append(qid)
            cols["measure"].append(name)
            cols["value"].append(value)
    return cols
