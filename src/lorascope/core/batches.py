"""Length-sorted batches under a token budget: the one batch planner of scoring, training's
sub-batches, the lens and zero-shot embedding (kept apart from scoring, so that a stage that
only batches does not carry the scoring loop in its code version)."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first, padded size <= budget.

    Sorting is stable (ties keep input order). A pair longer than the budget gets a batch of
    its own (it cannot be split); the caller decides whether that is acceptable.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        # sorted descending: the batch's first pair is its longest
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            longest = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def fixed_batches(n: int, batch_size: int) -> list[list[int]]:
    """Input order, ``batch_size`` pairs per batch: the naive batcher (benchmarks only)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
