"""The data stages: ``prepare_train`` (the training groups) and ``prepare_split`` (one
reranking split), written to the Parquet contracts.

Each rule hands over only its config slice (:func:`lorascope.study.slices.train_data`,
:func:`~lorascope.study.slices.split_data`), so changing one split's depth reruns that split
alone.
"""

from __future__ import annotations

import functools
import itertools
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
    raise ValueError(f"unknown data source {source!r} (embedded, ir_datasets; a split also files)")


def held_out_qids(source: str, dataset: str, sizes: list[int], seed: int) -> set[str]:
    """Query ids that splits sampling from the training collection take away from training."""
    if not sizes:
        return set()
    all_qids = source_module(source).query_ids(dataset)
    return {q for n in sizes for q in select_queries(all_qids, n, seed)}


def _split_rows(split: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """The (queries, candidates, qrels) rows of a split spec, from its source."""
    if split["source"] == "files":
        from lorascope.data import files

        all_qids: Any = functools.partial(files.query_ids, split)
        rerank: Any = functools.partial(files.rerank_split, split)
    else:
        module = source_module(split["source"])
        all_qids = functools.partial(module.query_ids, split["dataset"])
        extra = {"run": split["run"]} if split.get("run") else {}
        rerank = functools.partial(module.rerank_split, split["dataset"], **extra)
    qids = None
    if split["queries"] is not None:
        qids = select_queries(all_qids(), split["queries"], seed)
    return rerank(depth=split["depth"], qids=qids)


def prepare_split(params: Mapping[str, Any], out_dir: str | Path) -> dict[str, int]:
    """Write ``queries``, ``candidates`` and ``qrels`` of one reranking split."""
    split, seed = params["split"], params["seed"]
    queries, candidates, qrels = _split_rows(split, seed)
    tables = {"queries": queries, "candidates": candidates, "qrels": qrels}
    for name, given in list(tables.items()):  # refuse an empty split before writing any of it
        rows = iter(given)
        first = next(rows, None)
        if first is None:
            what = "judgements (qrels)" if name == "qrels" else name
            raise ValueError(f"split {split['source']}:{split['dataset']} (depth "
                             f"{split['depth']}) has no {what}; nothing written")
        tables[name] = itertools.chain([first], rows)
    counts = write_split(Path(out_dir), tables["queries"], tables["candidates"], tables["qrels"],
                         provenance.record("prepare_split", params))
    log.info("split %s: %s", split["dataset"], counts)
    return counts


def prepare_train(params: Mapping[str, Any], out_path: str | Path) -> int:
    """Write the training groups of every training collection (in config order), leaving out
    the queries held out of each for validation."""
    train, seed = params["train"], params["seed"]
    datasets = train["dataset"] if isinstance(train["dataset"], list) else [train["dataset"]]
    held = params["holdout_queries"]
    if isinstance(held, list):  # one collection: the sizes alone
        held = {datasets[0]: held}
    module = source_module(train["source"])
    excluded: dict[str, list[str]] = {}
    parts = []
    for dataset in datasets:
        exclude = held_out_qids(train["source"], dataset, held.get(dataset, []), seed)
        excluded[dataset] = sorted(exclude)
        parts.append(module.train_groups(
            dataset,
            group_size=train["group_size"],
            min_relevance=train["min_relevance"],
            negatives=train["negatives"],
            negatives_depth=train["negatives_depth"],
            max_queries=train["max_queries"],
            exclude_qids=frozenset(exclude),
            seed=seed,
        ))
    rows = write_train_groups(
        Path(out_path),
        itertools.chain(*parts),
        provenance.record("prepare_train", params, held_out_queries=excluded),
    )
    if rows == 0:
        raise ValueError(f"no training groups from {train['source']}:{', '.join(datasets)}")
    log.info("train groups: %d from %s (held out %s)", rows, ", ".join(datasets),
             {d: len(q) for d, q in excluded.items()})
    return rows
