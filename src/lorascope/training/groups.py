"""Training groups for the reranker: loaded from the ``train_groups`` contract and served in
a seeded, resumable order.

The order is a pure function of ``(seed, position)``: epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, e)``, and ``position`` counts groups consumed since the start.
Resuming therefore needs nothing but the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorascope.core import contracts


@dataclass(frozen=True)
class Group:
    """One query with its positive passage first, then its negatives."""

    qid: str
    query: str
    passages: tuple[str, ...]


def load_groups(path: str | Path, group_size: int | None) -> list[Group]:
    """The groups of a ``train_groups`` Parquet file, cut to ``group_size`` passages.

    Args:
        path: a ``train_groups`` table.
        group_size: passages per group (the positive and the first ``group_size - 1``
            negatives); ``None`` uses the largest size every group has.

    Raises:
        ValueError: the table is empty, or a group has too few negatives (naming its qid).
    """
    table = contracts.read_table(path, contracts.TRAIN_GROUPS)
    qids = table.column("qid").to_pylist()
    if not qids:
        raise ValueError(f"{path}: no training groups")
    queries = table.column("query").to_pylist()
    positives = table.column("pos_text").to_pylist()
    negatives = table.column("neg_texts").to_pylist()
    fewest = min(len(n) for n in negatives)
    size = fewest + 1 if group_size is None else group_size
    if size < 2:
        raise ValueError(f"{path}: groups need at least one negative (group size {size})")
    for qid, negs in zip(qids, negatives):
        if len(negs) < size - 1:
            raise ValueError(
                f"{path}: group of query {qid} has {len(negs)} negatives; group_size {size} "
                f"needs {size - 1}"
            )
    return [
        Group(qid, query, (pos, *negs[: size - 1]))
        for qid, query, pos, negs in zip(qids, queries, positives, negatives)
    ]


@dataclass(frozen=True)
class GroupOrder:
    """Seeded per-epoch shuffles over ``size`` groups, addressed by a global position."""

    size: int
    seed: int

    def permutation(self, epoch: int) -> list[int]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.size).tolist()

    def take(self, position: int, count: int) -> list[int]:
        """Indices of the ``count`` groups starting at ``position`` (crossing epochs)."""
        out: list[int] = []
        epoch, offset = divmod(position, self.size)
        perm = self.permutation(epoch)
        while len(out) < count:
            if offset == self.size:
                epoch, offset = epoch + 1, 0
                perm = self.permutation(epoch)
            take = min(count - len(out), self.size - offset)
            out.extend(perm[offset : offset + take])
            offset += take
        return out
