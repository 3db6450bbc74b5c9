"""Source-independent pieces of data preparation.

Every data source (the embedded TREC DL files, ir_datasets) yields plain rows; this module
turns them into the Parquet contracts: deterministic query selection, training groups of one
positive plus hard negatives, and reranking splits (queries, candidates, qrels).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorascope.core.contracts import TRAIN_GROUPS, write_rows
from lorascope.data.splits import SPLIT_FILES, split_paths


def _stable_key(seed: int, qid: str) -> str:
    return hashlib.sha1(f"{seed}:{qid}".encode()).hexdigest()


def select_queries(qids: Iterable[str], n: int | None, seed: int) -> list[str]:
    """``n`` query ids chosen deterministically (independent of input order), sorted.

    Ranking by a seeded hash means the same ids come out whatever order the source yields
    them in, and a split that samples from the training collection holds out exactly the
    queries the training split leaves out.
    """
    unique = sorted(set(qids))
    if n is None or n >= len(unique):
        return unique
    return sorted(sorted(unique, key=lambda q: _stable_key(seed, q))[:n])


def make_groups(
    qid: str,
    query: str,
    positives: Sequence[tuple[str, str]],
    negatives: Sequence[tuple[str, str]],
    group_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One training group per positive: the positive and ``group_size - 1`` hard negatives.

    Negatives are drawn without replacement from the query's pool, with replacement when the
    pool is smaller than needed (as Tevatron does). The draw is seeded per query, so a group
    does not depend on which other queries were prepared. A query with no negatives yields no
    group (there is nothing to contrast the positive with).
    """
    if not positives or not negatives:
        return []
    rng = random.Random(_stable_key(seed, qid))
    need = group_size - 1
    groups = []
    for pos_docid, pos_text in positives:
        if len(negatives) >= need:
            chosen = rng.sample(list(negatives), need)
        else:
            chosen = [rng.choice(negatives) for _ in range(need)]
        groups.append(
            {
                "qid": qid,
                "query": query,
                "pos_docid": pos_docid,
                "pos_text": pos_text,
                "neg_docids": [d for d, _ in chosen],
                "neg_texts": [t for _, t in chosen],
            }
        )
    return groups


def write_train_groups(
    path: Path, groups: Iterable[Mapping[str, Any]], provenance: Mapping[str, Any]
) -> int:
    return write_rows(path, TRAIN_GROUPS, groups, provenance)


def write_split(
    out_dir: Path,
    queries: Iterable[Mapping[str, Any]],
    candidates: Iterable[Mapping[str, Any]],
    qrels: Iterable[Mapping[str, Any]],
    provenance: Mapping[str, Any],
) -> dict[str, int]:
    """Write a reranking split: ``queries``, ``candidates`` (with text) and ``qrels``."""
    paths = split_paths(out_dir)
    counts = {}
    for name, rows in (("queries", queries), ("candidates", candidates), ("qrels", qrels)):
        counts[name] = write_rows(paths[name], SPLIT_FILES[name], rows, provenance)
    return counts


def take_depth(hits: Iterable[Mapping[str, Any]], depth: int) -> Iterator[Mapping[str, Any]]:
    """Candidates of rank ``<= depth`` (ranks start at 1)."""
    return (h for h in hits if h["rank"] <= depth)
