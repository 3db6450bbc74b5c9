"""The embedded TREC DL data: real BM25 top-100 lists with passage text, and official qrels.

Shipped inside the package (``lorascope/resources/trec-dl/``) in the project's own contracts
(queries / candidates / qrels Parquet per collection), built once by :func:`build` from the
files described in that folder's README. This module is the embedded *source*: the same
three functions as :mod:`lorascope.data.irds` (``query_ids``, ``rerank_split``,
``train_groups``), answered from the shipped files.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Collection, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lorascope.core.contracts import CANDIDATES, QRELS, QUERIES, read_table, write_table
from lorascope.data.common import make_groups

log = logging.getLogger(__name__)

RESOURCE_DIR = "resources/trec-dl"
#: collection -> (candidate list file, qrels file or None)
SOURCE_FILES = {
    "dl19": ("bm25-top100-dl19.json.gz", "qrels-dl19-passage.txt"),
    "dl20": ("bm25-top100-dl20.json.gz", "qrels-dl20-passage.txt"),
    "dl21": ("bm25-top100-dl21.json.gz", "qrels-dl21-passage.txt"),
}


def _resource(name: str):
    return resources.files("lorascope").joinpath(RESOURCE_DIR, name)


def load(dataset: str, table: str) -> pa.Table:
    """One shipped table (``queries``, ``candidates`` or ``qrels``) of an embedded collection."""
    contract = {"queries": QUERIES, "candidates": CANDIDATES, "qrels": QRELS}[table]
    if dataset not in SOURCE_FILES:
        raise ValueError(f"unknown embedded collection {dataset!r} (have {sorted(SOURCE_FILES)})")
    with resources.as_file(_resource(f"{dataset}.{table}.parquet")) as path:
        return read_table(path, contract)


# --------------------------------------------------------------------------- source API


def query_ids(dataset: str) -> list[str]:
    """All (judged) query ids of an embedded collection."""
    return load(dataset, "queries").column("qid").to_pylist()


def _filter_qids(table: pa.Table, qids: Collection[str] | None) -> pa.Table:
    if qids is None:
        return table
    return table.filter(pc.is_in(table["qid"], value_set=pa.array(sorted(qids), pa.string())))


def rerank_split(
    dataset: str, *, depth: int, qids: Collection[str] | None
) -> tuple[Iterator[dict], Iterator[dict], Iterator[dict]]:
    """Queries, top-``depth`` candidates and qrels of ``qids`` (None = all queries)."""
    queries = _filter_qids(load(dataset, "queries"), qids)
    candidates = _filter_qids(load(dataset, "candidates"), qids)
    candidates = candidates.filter(pc.less_equal(candidates["rank"], depth))
    qrels = _filter_qids(load(dataset, "qrels"), qids)
    return (
        iter(queries.to_pylist()),
        iter(candidates.to_pylist()),
        iter(qrels.to_pylist()),
    )


def train_groups(
    dataset: str,
    *,
    group_size: int,
    min_relevance: int,
    negatives: str,
    negatives_depth: int,
    max_queries: int | None,
    exclude_qids: Collection[str],
    seed: int,
) -> Iterator[dict[str, Any]]:
    """Training groups from an embedded collection's BM25 top-100.

    Positives: passages in a query's top-100 judged ``>= min_relevance``. Negatives: the same
    query's top-``negatives_depth`` passages judged 0 or unjudged (hard negatives, as in the
    paper); passages judged between 1 and ``min_relevance - 1`` are neither.
    """
    from lorascope.data.common import select_queries

    if negatives != "scoreddocs":
        raise ValueError(f"embedded collections only have 'scoreddocs' negatives, not {negatives!r}")
    grades: dict[tuple[str, str], int] = {
        (r["qid"], r["docid"]): r["relevance"] for r in load(dataset, "qrels").to_pylist()
    }
    texts = {r["qid"]: r["query"] for r in load(dataset, "queries").to_pylist()}
    by_query: dict[str, list[dict[str, Any]]] = {}
    for hit in load(dataset, "candidates").to_pylist():
        by_query.setdefault(hit["qid"], []).append(hit)
    excluded = set(exclude_qids)
    eligible = [
        q
        for q, hits in by_query.items()
        if q not in excluded and any(grades.get((q, h["docid"]), 0) >= min_relevance for h in hits)
    ]
    for qid in select_queries(eligible, max_queries, seed):
        hits = sorted(by_query[qid], key=lambda h: h["rank"])
        positives = [
            (h["docid"], h["text"]) for h in hits if grades.get((qid, h["docid"]), 0) >= min_relevance
        ]
        pool = [
            (h["docid"], h["text"])
            for h in hits
            if h["rank"] <= negatives_depth and grades.get((qid, h["docid"]), 0) == 0
        ]
        yield from make_groups(qid, texts[qid], positives, pool, group_size, seed)


# --------------------------------------------------------------------------- build


def _read_qrels(path: Path) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {"qid": [], "docid": [], "relevance": []}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{n}: a qrels line has 4 fields (qid 0 docid grade), got {line!r}")
            try:
                grade = int(parts[3])
            except ValueError as err:
                raise ValueError(f"{path}:{n}: relevance grade {parts[3]!r} is not an integer") from err
            cols["qid"].append(parts[0])
            cols["docid"].append(parts[2])
            cols["relevance"].append(grade)
    return cols


def _read_candidates(path: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError, EOFError) as err:
        raise ValueError(f"{path}: not a gzipped JSON candidate list ({err})") from err
    queries: dict[str, list[Any]] = {"qid": [], "query": []}
    cands: dict[str, list[Any]] = {c: [] for c in CANDIDATES.columns}
    for i, entry in enumerate(entries):
        try:
            hits = entry["hits"]
            qid = str(hits[0]["qid"])
            queries["qid"].append(qid)
            queries["query"].append(entry["query"])
            for hit in hits:
                if str(hit["qid"]) != qid:
                    raise ValueError(f"hit of query {hit['qid']} inside query {qid}")
                cands["qid"].append(qid)
                cands["docid"].append(str(hit["docid"]))
                cands["rank"].append(int(hit["rank"]))
                cands["first_stage_score"].append(float(hit["score"]))
                cands["text"].append(hit["content"])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {i} is not {{query, hits: [...]}} ({err!r})") from err
    return queries, cands


def build(source_dir: str | Path, out_dir: str | Path) -> dict[str, dict[str, int]]:
    """Convert the TREC DL source files into the shipped Parquet tables; returns row counts.

    Every source file is read and checked before the first table is written, so a bad file
    leaves ``out_dir`` untouched.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    parsed = {}
    for name, (cand_file, qrels_file) in SOURCE_FILES.items():
        queries, cands = _read_candidates(source_dir / cand_file)
        parsed[name] = (queries, cands, _read_qrels(source_dir / qrels_file))
    counts = {}
    for name, (queries, cands, qrels) in parsed.items():
        counts[name] = {
            "queries": write_table(out_dir / f"{name}.queries.parquet", queries, QUERIES),
            "candidates": write_table(out_dir / f"{name}.candidates.parquet", cands, CANDIDATES),
            "qrels": write_table(out_dir / f"{name}.qrels.parquet", qrels, QRELS),
        }
        log.info("embedded %s: %s", name, counts[name])
    return counts
