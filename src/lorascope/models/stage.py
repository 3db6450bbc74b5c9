"""The ``prepare_base`` stage: a ready base model directory from the config's source (tiny
models read the study's passages from the training groups to pretrain on)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, provenance

log = logging.getLogger(__name__)

STAGE = "prepare_base"


def passage_texts(train_groups: str | Path) -> Iterator[str]:
    """Unique passage texts of the training groups (the tiny models' pretraining corpus)."""
    from lorascope.core.contracts import TRAIN_GROUPS, iter_batches

    seen: set[str] = set()
    for batch in iter_batches(train_groups, TRAIN_GROUPS):
        for pos, negs in zip(batch.column("pos_text").to_pylist(), batch.column("neg_texts").to_pylist()):
            for text in (pos, *negs):
                if text not in seen:
                    seen.add(text)
                    yield text


def prepare_base(params: Mapping[str, Any], out_dir: str | Path, train_groups: str | Path | None) -> None:
    from lorascope.models.base import BaseModelSpec, prepare_base as _prepare

    spec = BaseModelSpec.from_source(params["source"], seed=params["seed"])
    texts = (lambda: passage_texts(train_groups)) if train_groups else None
    manifest = _prepare(spec, out_dir, texts)
    fileio.write_json(Path(out_dir) / "provenance.json", provenance.record(STAGE, params))
    log.info("base model %s: %s", params["model"], manifest.get("source"))
