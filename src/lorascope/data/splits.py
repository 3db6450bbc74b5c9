"""A reranking split on disk: its three tables, and reading them for scoring.

A split directory holds ``queries.parquet``, ``candidates.parquet`` (first-stage top-k with
passage text) and ``qrels.parquet`` (:mod:`lorascope.core.contracts`); the data stage writes
them (:func:`lorascope.data.common.write_split`), every scoring stage reads them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lorascope.core.contracts import CANDIDATES, QRELS, QUERIES, read_table
from lorascope.core.names import SPLIT_TABLES

if TYPE_CHECKING:
    import pyarrow as pa

SPLIT_FILES = dict(zip(SPLIT_TABLES, (QUERIES, CANDIDATES, QRELS)))


def split_paths(out_dir: str | Path) -> dict[str, Path]:
    """The three files of a reranking split directory."""
    return {name: Path(out_dir) / f"{name}.parquet" for name in SPLIT_FILES}


class EmptySplitError(ValueError):
    """A split table without rows: nothing to rank or nothing to judge a ranking by."""


def check_not_empty(table: pa.Table, path: Path, what: str) -> pa.Table:
    """``table``, or :class:`EmptySplitError` naming ``path`` when it has no rows."""
    if table.num_rows == 0:
        raise EmptySplitError(f"{path}: no {what}; a split needs queries, their first-stage "
                              "candidates and relevance judgements (qrels) to be evaluated")
    return table


def read_split(split_dir: str | Path) -> tuple[dict[str, str], list[tuple[str, str, str]], pa.Table]:
    """Queries, candidates ``(qid, docid, text)`` in (qid, rank) order, and qrels.

    Raises:
        EmptySplitError: a table has no rows (naming its file).
    """
    paths = split_paths(Path(split_dir))
    q = check_not_empty(read_table(paths["queries"], QUERIES), paths["queries"], "queries")
    queries = dict(zip(q.column("qid").to_pylist(), q.column("query").to_pylist()))
    c = check_not_empty(read_table(paths["candidates"], CANDIDATES,
                                   columns=["qid", "docid", "rank", "text"]),
                        paths["candidates"], "candidates")
    rows = sorted(zip(c.column("qid").to_pylist(), c.column("rank").to_pylist(),
                      c.column("docid").to_pylist(), c.column("text").to_pylist()))
    candidates = [(qid, docid, text) for qid, _, docid, text in rows]
    qrels = check_not_empty(read_table(paths["qrels"], QRELS), paths["qrels"], "judgements")
    return queries, candidates, qrels


def subset(
    candidates: list[tuple[str, str, str]],
    qrels: pa.Table,
    *,
    queries: int | None = None,
    depth: int | None = None,
) -> list[tuple[str, str, str]]:
    """A deterministic part of a split for the costlier analyses: the first ``queries`` judged
    queries in qid order (``None``: all), each with its first ``depth`` candidates in first-stage
    rank order (``None``: all). ``candidates`` as :func:`read_split` returns them.

    Raises:
        ValueError: ``queries`` or ``depth`` < 1, or no judged query has candidates.
    """
    for name, value in (("queries", queries), ("depth", depth)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"subset: {name} must be a positive int or None, got {value!r}")
    judged = set(qrels.column("qid").to_pylist())
    qids = sorted({qid for qid, _, _ in candidates if qid in judged})
    if not qids:
        raise ValueError("subset: no judged query has candidates")
    keep = set(qids if queries is None else qids[:queries])
    out: list[tuple[str, str, str]] = []
    taken: dict[str, int] = {}
    for qid, docid, text in candidates:
        if qid in keep and (depth is None or taken.get(qid, 0) < depth):
            taken[qid] = taken.get(qid, 0) + 1
            out.append((qid, docid, text))
    return out
