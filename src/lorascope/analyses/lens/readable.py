"""When relevance counts as readable on a lens curve (the stage's summary and the report)."""

from __future__ import annotations

from collections.abc import Mapping

#: A layer is "readable" when its value is >= the final layer's - epsilon (the default).
DEFAULT_EPSILON = 0.01


def readable_from(curve: Mapping[int, float], epsilon: float) -> int | None:
    """The first (shallowest) layer whose value is >= the last layer's - ``epsilon``: from
    where relevance is readable. None for an empty curve."""
    if not curve:
        return None
    order = sorted(curve)
    final = curve[order[-1]]
    return next(layer for layer in order if curve[layer] >= final - epsilon)
