"""Scoring a sweep, shared by every stage that scores ablations: its settings, the rows of the
scores table, the per-query metrics table, and the summary with paired significance tests.

The ``evaluate`` stage (:mod:`lorascope.evaluate`), the boundary comparison
(:mod:`lorascope.analyses.boundary.compare`) and the relevance lens
(:mod:`lorascope.analyses.lens.stage`) read their ``scoring`` params with
:class:`ScoringSettings`; the first two write their outputs with :func:`score_rows`,
:func:`write_metrics` and :func:`sweep_summary`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.core import metrics, stats
from lorascope.core.ablation import Ablation
from lorascope.core.contracts import METRICS, write_table
from lorascope.core.names import FULL
from lorascope.core.precision import PRECISIONS, Choice, resolve
from lorascope.models.reranker import MAX_LENGTH

log = logging.getLogger(__name__)

#: The identifying fields of a sweep job, copied into its summary.
RUN_FIELDS = ("model", "adapter", "step", "sweep", "split")
SCORING_KEYS = ("batch_tokens", "max_length", "precision")


@dataclass(frozen=True)
class ScoringSettings:
    """How a stage scores pairs: a stage's ``scoring`` params.

    Attributes:
        batch_tokens: token budget per scoring batch (padded tokens).
        max_length: token cut-off of a pair (the training one).
        precision: ``fp32``, ``bf16`` or ``auto``, resolved on the machine that scores
            (:mod:`lorascope.core.precision`).
    """

    batch_tokens: int = 16384
    max_length: int = MAX_LENGTH
    precision: str = "fp32"

    def resolve(self, device: str) -> Choice:
        """The precision the scoring runs in on ``device``."""
        return resolve(self.precision, device)

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None, stage: str) -> ScoringSettings:
        """Parse a ``scoring`` block; errors name ``stage`` and the key."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(SCORING_KEYS))
        if unknown:
            raise ValueError(f"{stage} params: unknown keys {[f'scoring.{k}' for k in unknown]}; "
                             f"known: {', '.join(f'scoring.{k}' for k in SCORING_KEYS)}")
        settings = cls(
            batch_tokens=int(raw.get("batch_tokens", cls.batch_tokens)),
            max_length=int(raw.get("max_length", cls.max_length)),
            precision=raw.get("precision", cls.precision),
        )
        if settings.batch_tokens < 1 or settings.max_length < 1:
            raise ValueError(f"{stage} params: scoring.batch_tokens and scoring.max_length must "
                             "be positive")
        if settings.precision not in PRECISIONS:
            raise ValueError(f"{stage} params: scoring.precision must be one of "
                             f"{', '.join(PRECISIONS)}, got {settings.precision!r}")
        return settings


class UsesScoring:
    """A stage's settings with a ``scoring`` block, read through as attributes."""

    scoring: ScoringSettings

    @property
    def batch_tokens(self) -> int:
        return self.scoring.batch_tokens

    @property
    def max_length(self) -> int:
        return self.scoring.max_length


def measures_param(params: Mapping[str, Any], stage: str) -> tuple[str, ...]:
    """A stage's ``metrics`` param: a non-empty list of distinct, known ir-measures names
    (an unknown one fails here, before any loading)."""
    from lorascope.core import metrics

    measures = params.get("metrics")
    if (not isinstance(measures, list) or not measures
            or not all(isinstance(m, str) for m in measures)):
        raise ValueError(f"{stage} params: 'metrics' must be a non-empty list of measure names")
    if len(set(measures)) != len(measures):
        raise ValueError(f"{stage} params: 'metrics' lists a measure twice: {measures}")
    metrics.parse_measures(measures)
    return tuple(measures)


def significance_param(params: Mapping[str, Any], stage: str) -> tuple[str, str, float]:
    """A stage's ``significance`` param: ``(test, correction, alpha)``, defaults filled
    (wilcoxon, holm, 0.05), each checked."""
    from lorascope.core import stats

    sig = dict(params.get("significance") or {})
    unknown = sorted(f"significance.{k}" for k in set(sig) - {"test", "correction", "alpha"})
    if unknown:
        raise ValueError(f"{stage} params: unknown keys {unknown}")
    test = sig.get("test", "wilcoxon")
    correction = sig.get("correction", "holm")
    alpha = float(sig.get("alpha", 0.05))
    if test not in stats.TESTS:
        raise ValueError(f"{stage} params: significance.test must be one of "
                         f"{', '.join(stats.TESTS)}, got {test!r}")
    if correction not in stats.CORRECTIONS:
        raise ValueError(f"{stage} params: significance.correction must be one of "
                         f"{', '.join(stats.CORRECTIONS)}, got {correction!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"{stage} params: significance.alpha must be in (0, 1), got {alpha}")
    return test, correction, alpha


@dataclass(frozen=True)
class EvalSettings(UsesScoring):
    """The evaluate stage's parsed params.

    Attributes:
        ablations: the sweep, ``full`` first (added when the params lack it).
        measures: ir-measures names.
        test: paired test, ``wilcoxon`` or ``ttest``.
        correction: ``holm``, ``bonferroni`` or ``none`` over the sweep's ablations.
        alpha: significance level applied to corrected p-values.
        scoring: how pairs are batched and the model is loaded (:class:`ScoringSettings`).
    """

    ablations: tuple[Ablation, ...]
    measures: tuple[str, ...]
    test: str = "wilcoxon"
    correction: str = "holm"
    alpha: float = 0.05
    scoring: ScoringSettings = ScoringSettings()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EvalSettings:
        """Parse and check the params, with an error naming the offending key."""
        raw = params.get("ablations")
        if not isinstance(raw, list) or not raw:
            raise ValueError("evaluate params: 'ablations' must be a non-empty list")
        ablations = [Ablation.from_params(a) for a in raw]
        names = [a.name for a in ablations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evaluate params: duplicate ablation names {dup}")
        full = [a for a in ablations if a.name == FULL]
        if full and not full[0].is_full:
            raise ValueError(f"evaluate params: ablation '{FULL}' must zero and truncate nothing")
        if not full:
            log.info("params name no '%s' ablation; adding it as the reference", FULL)
        ablations = [Ablation(FULL, frozenset())] + [a for a in ablations if a.name != FULL]
        measures = measures_param(params, "evaluate")
        test, correction, alpha = significance_param(params, "evaluate")
        scoring = ScoringSettings.from_params(params.get("scoring"), "evaluate")
        settings = cls(
            ablations=tuple(ablations),
            measures=measures,
            test=test,
            correction=correction,
            alpha=alpha,
            scoring=scoring,
        )
        return settings


def write_metrics(
    out_metrics: str | Path,
    runs: Mapping[str, Mapping[tuple[str, str], float]],
    qrels: Any,
    measures: Sequence[str],
    record: Mapping[str, Any],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-query metrics of every run (ablation name -> scores) written as one METRICS table;
    returns them as ``{ablation: {measure: {qid: value}}}``."""
    per_query = {name: metrics.per_query(qrels, as_run(scores), list(measures))
                 for name, scores in runs.items()}
    columns: dict[str, list[Any]] = {"ablation": [], "qid": [], "measure": [], "value": []}
    for name, values in per_query.items():
        for key, col in metrics.to_rows(values, name).items():
            columns[key].extend(col)
    write_table(out_metrics, columns, METRICS, record)
    return per_query


def score_rows(name: str, scores: Mapping[tuple[str, str], float]) -> dict[str, list[Any]]:
    return {
        "ablation": [name] * len(scores),
        "qid": [q for q, _ in scores],
        "docid": [d for _, d in scores],
        "score": list(scores.values()),
    }


def as_run(scores: Mapping[tuple[str, str], float]) -> list[tuple[str, str, float]]:
    return [(q, d, s) for (q, d), s in scores.items()]


def sweep_summary(
    params: Mapping[str, Any],
    settings: EvalSettings,
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    timing: Mapping[str, Mapping[str, Any]],
    prepared: Any,
    record: Mapping[str, Any],
    precision: Choice | None = None,
) -> dict[str, Any]:
    """The summary of a scored sweep: per ablation the aggregate metrics, the delta to
    ``full``, raw and corrected paired p-values with a ``significant`` flag, padding and
    timing; plus the run's identifying fields (``RUN_FIELDS`` of ``params``), the scoring
    settings and ``record`` (the provenance)."""
    full = per_query[FULL]
    others = [a for a in settings.ablations if a.name != FULL]
    raw: dict[str, dict[str, float]] = {m: {} for m in settings.measures}
    for ablation in others:
        for m in settings.measures:
            raw[m][ablation.name] = stats.compare(full[m], per_query[ablation.name][m],
                                                  settings.test)
    adjusted = {m: stats.correct(raw[m], settings.correction) for m in settings.measures}
    full_means = metrics.aggregate(full)
    entries: dict[str, Any] = {}
    for ablation in settings.ablations:
        values = per_query[ablation.name]
        means = metrics.aggregate(values)
        is_full = ablation.name == FULL
        entries[ablation.name] = {
            "zeroed_modules": len(ablation.zeroed),
            "zeroed": ablation.to_params()["zeroed"],
            "truncate_rank": ablation.truncate_rank,
            "energy_kept": timing[ablation.name].get("energy_kept"),
            "metrics": means,
            "delta": {m: means[m] - full_means[m] for m in settings.measures},
            "p_value": {m: None if is_full else raw[m][ablation.name]
                        for m in settings.measures},
            "p_adjusted": {m: None if is_full else adjusted[m][ablation.name]
                           for m in settings.measures},
            "significant": {m: False if is_full else adjusted[m][ablation.name] < settings.alpha
                            for m in settings.measures},
            "queries": len(next(iter(values.values()))),
            "pairs": len(prepared),
            "padding_ratio": timing[ablation.name]["padding_ratio"],
            "seconds": timing[ablation.name]["seconds"],
            "pairs_per_second": round(len(prepared) / max(timing[ablation.name]["seconds"],
                                                          1e-9), 2),
        }
    return {
        **{k: params[k] for k in RUN_FIELDS if k in params},
        "reference": FULL,
        "measures": list(settings.measures),
        "significance": {"test": settings.test, "correction": settings.correction,
                         "alpha": settings.alpha, "family": "the sweep's ablations, per measure"},
        "scoring": {"batch_tokens": prepared.batch_tokens, "max_length": settings.max_length,
                    "precision": precision.resolved if precision else None,
                    "pairs": len(prepared),
                    "real_tokens": prepared.real_tokens, "padded_tokens": prepared.padded_tokens,
                    "padding_ratio": round(prepared.padding_ratio, 4)},
        "ablations": entries,
        "ablation_order": [a.name for a in settings.ablations],  # the JSON keys get sorted
        "provenance": dict(record),
    }
