"""Paired significance tests, multiple-comparison corrections, and Table 2's convergence rule.

Each ablation of a sweep is compared with the sweep's ``full`` adapter on the same queries
(paired by query id). A sweep tests many ablations against one reference, so the p-values of a
sweep are corrected together (Holm-Bonferroni by default: it controls the family-wise error
rate like Bonferroni but rejects at least as much).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

Test = Literal["wilcoxon", "ttest"]
Correction = Literal["holm", "bonferroni", "none"]
TESTS = ("wilcoxon", "ttest")
CORRECTIONS = ("holm", "bonferroni", "none")


def compare(full: Mapping[str, float], other: Mapping[str, float], test: Test = "wilcoxon") -> float:
    """Two-sided p-value of a paired test of ``other`` against ``full``, per query.

    Args:
        full: per-query metric of the reference (``qid -> value``).
        other: per-query metric of the ablation, over the same queries.
        test: ``wilcoxon`` (signed-rank; zero differences dropped, scipy's default) or
            ``ttest`` (paired t-test).

    Returns:
        The p-value; 1.0 when every difference is zero (no evidence of a change), also for
        fewer than two queries.

    Raises:
        ValueError: the two runs cover different queries, or an unknown test.
    """
    import numpy as np
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    if set(full) != set(other):
        only_full = sorted(set(full) - set(other))[:3]
        only_other = sorted(set(other) - set(full))[:3]
        raise ValueError(
            f"paired test over different queries (only in full: {only_full}, "
            f"only in other: {only_other})"
        )
    qids = sorted(full)
    a = np.array([full[q] for q in qids], dtype=float)
    b = np.array([other[q] for q in qids], dtype=float)
    diff = b - a
    if len(qids) < 2 or not np.any(diff != 0):
        return 1.0
    if test == "wilcoxon":
        p = stats.wilcoxon(diff).pvalue
    else:
        if np.all(diff == diff[0]):  # constant non-zero shift: t is infinite
            return 0.0
        p = stats.ttest_rel(b, a).pvalue
    p = float(p)
    return 1.0 if math.isnan(p) else min(1.0, max(0.0, p))


def bonferroni(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Bonferroni-adjusted p-values: ``min(1, m * p)`` over the ``m`` tests."""
    m = len(pvalues)
    return {name: min(1.0, p * m) for name, p in pvalues.items()}


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni step-down adjusted p-values.

    With p-values sorted ascending ``p(1) <= ... <= p(m)``, the adjusted value of the ``i``-th
    is ``max_{j <= i} min(1, (m - j + 1) p(j))``; reject where adjusted < alpha.
    """
    m = len(pvalues)
    ordered = sorted(pvalues.items(), key=lambda kv: (kv[1], kv[0]))
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[name] = running
    return {name: adjusted[name] for name in pvalues}


def correct(pvalues: Mapping[str, float], method: Correction = "holm") -> dict[str, float]:
    """Adjust a family of p-values with ``holm``, ``bonferroni`` or ``none``."""
    if method == "holm":
        return holm(pvalues)
    if method == "bonferroni":
        return bonferroni(pvalues)
    if method == "none":
        return dict(pvalues)
    raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")


def convergence_step(
    curve: Mapping[int, float], epsilon: float, *, higher_is_better: bool = True
) -> int:
    """The first checkpoint step whose metric is within ``epsilon`` of the run's best.

    Table 2 prints each run's best nDCG@10 with this step beside it: the first step whose
    (validation) metric reaches ``best - epsilon`` (absolute). ``epsilon = 0`` gives the step of
    the best checkpoint (the earliest one on ties).

    Raises:
        ValueError: an empty curve, a NaN metric, or a negative epsilon.
    """
    if not curve:
        raise ValueError("convergence_step needs at least one checkpoint")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if any(math.isnan(v) for v in curve.values()):
        raise ValueError(f"the curve has NaN values: {dict(curve)}")
    sign = 1.0 if higher_is_better else -1.0
    best = max(sign * v for v in curve.values())
    for step in sorted(curve):
        if sign * curve[step] >= best - epsilon - 1e-12:  # "within" includes the boundary
            return step
    raise AssertionError("unreachable: the best step is within epsilon of itself")
