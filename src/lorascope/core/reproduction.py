"""The check that in-place edits of a model left it as they found it: re-score the scoring
plan's first batches and compare with the scores of the first pass.

Shared by the ``evaluate`` sweep (:func:`lorascope.evaluate.score_sweep`: ``full`` after the
switched ablations) and the head ablations (:func:`lorascope.analyses.heads.ablate.score_heads`:
the unablated model after the hooks). While the plan is the one of the first pass, its first
batches hold the same pairs in the same order and padding, so the comparison is bitwise;
after an out-of-memory re-plan the shapes differ and a relative tolerance of
:data:`REPLANNED_TOLERANCE` is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The check re-scores the plan's first batches up to at least this many pairs.
PAIRS = 64
#: Relative tolerance (of max(1, |score|)) after an out-of-memory re-plan (``Rescored.how``
#: spells it out).
REPLANNED_TOLERANCE = 1e-3

Key = tuple[str, str]


def leading_batches(batches: Sequence[Sequence[int]], min_pairs: int) -> int:
    """How many leading batches of a plan hold at least ``min_pairs`` pairs (all of them when
    the plan holds fewer)."""
    total = 0
    for n, batch in enumerate(batches, start=1):
        total += len(batch)
        if total >= min_pairs:
            return n
    return len(batches)


@dataclass(frozen=True)
class Rescored:
    """One re-scoring of a plan's first batches.

    Attributes:
        again: the new scores of the pairs checked.
        differ: the pairs whose score changed (in ``again``'s order).
        how: how they were compared (``bitwise`` or the tolerance, with why).
        batches: the leading batches re-scored.
    """

    again: dict[Key, float]
    differ: list[Key]
    how: str
    batches: int


def rescore_first(prepared: Any, model: Any, device: str, first: Mapping[Key, float],
                  plan_version: int, *, desc: str, min_pairs: int = PAIRS) -> Rescored:
    """Re-score the plan's first batches (at least ``min_pairs`` pairs) of ``prepared`` (a
    :class:`~lorascope.core.scoring.PreparedPairs`) and compare with ``first``, the scores of
    the pass made under plan ``plan_version``: bitwise while the plan is that one, within
    :data:`REPLANNED_TOLERANCE` after a re-plan."""
    n = leading_batches(prepared.batches, min_pairs)
    again = prepared.score(model, device=device, progress=False, desc=desc, first_batches=n)
    if prepared.plan_version == plan_version:
        differ = [k for k in again if again[k] != first[k]]
        how = "bitwise"
    else:  # an OOM re-planned the batches: other shapes, so compare with a tolerance
        differ = [k for k in again if abs(again[k] - first[k])
                  > REPLANNED_TOLERANCE * max(1.0, abs(first[k]))]
        how = "within 1e-3 (batches were re-planned after an out-of-memory error)"
    return Rescored(again, differ, how, n)
