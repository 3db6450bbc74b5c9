"""The ``prepare_data`` stage: one split of a study written to the Parquet contracts.

The rule hands over only its config slice (see :func:`split_params` / :func:`train_params`),
so changing one split's depth reruns that split alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from lorascope.core import provenance
from lorascope.data.common import select_queries, write_split, write_train_groups

log = logging.getLogger(__name__)


def source_module(source: str) -> ModuleType:
    """The data source implementing ``query_ids``, ``rerank_split`` and ``train_groups``."""
    if source == "embedded":
        from lorascope.data import embedded

        return embedded
    if source == "ir_datasets":
        from lorascope.data import irds

        return irds
    raise ValueError(f"unknown data source {source!r} (embedded, ir_datasets)")


def held_out_qids(source: str, dataset: str, sizes: list[int], seed: int) -> set[str]:
    """Query ids that splits sampling from the training collection take away from training."""
    if not sizes:
        return set()
    all_qids = source_module(source).query_ids(dataset)
    return {q for n in sizes for q in select_queries(all_qids, n, seed)}


def prepare_split(params: Mapping[str, Any], out_dir: str | Path) -> dict[str, int]:
    """Write ``queries``, ``candidates`` and ``qrels`` of one reranking split."""
    split, seed = params["split"], params["seed"]
    module = source_module(split["source"])
    qids = None
    if split["queries"] is not None:
        qids = select_queries(module.query_ids(split["dataset"]), split["queries"], seed)
    queries, candidates, qrels = module.rerank_split(split["dataset"], depth=split["depth"], qids=qids)
    counts = write_split(
        Path(out_dir), queries, candidates, qrels, provenance.record("prepare_data", params)
    )
    if counts["queries"] == 0 or counts["candidates"] == 0:
        raise ValueError(f"split {split} has no queries or candidates: {counts}")
    log.info("split %s: %s", split["dataset"], counts)
    return counts


def prepare_train(params: Mapping[str, Any], out_path: str | Path) -> int:
    """Write the training groups, leaving out the queries held out for validation."""
    train, seed = params["train"], params["seed"]
    exclude = held_out_qids(train["source"], train["dataset"], params["holdout_queries"], seed)
    groups = source_module(train["source"]).train_groups(
        train["dataset"],
        group_size=train["group_size"],
        min_relevance=train["min_relevance"],
        negatives=train["negatives"],
        negatives_depth=train["negatives_depth"],
        max_queries=train["max_queries"],
        exclude_qids=frozenset(exclude),
        seed=seed,
    )
    rows = write_train_groups(
        Path(out_path),
        groups,
        provenance.record("prepare_data", params, held_out_queries=sorted(exclude)),
    )
    if rows == 0:
        raise ValueError(f"no training groups from {train['source']}:{train['dataset']}")
    log.info("train groups: %d (held out %d queries)", rows, len(exclude))
    return rows
