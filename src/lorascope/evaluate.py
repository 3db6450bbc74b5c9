"""The ``evaluate`` stage: one adapter checkpoint, one sweep of ablations, one split.

The base model and the adapter are loaded **once**; the split's pairs are tokenised and
batched once (:class:`~lorascope.scoring.PreparedPairs`); every ablation of the sweep is
scored by switching the selected LoRA layers off in place (:func:`~lorascope.switching.zeroed`)
and, for an ablation with a ``truncate_rank`` (the ``svd`` generator), by truncating every other
LoRA module to that rank in place (:func:`~lorascope.switching.truncated`). After the sweep
``full`` is scored again on the first batches of the plan (at least
:data:`REPRODUCTION_PAIRS` pairs, the same batches as in the first pass) and must reproduce
those scores bitwise - proof that switching left the adapter as it found it, at a fraction of a
full scoring pass.

Outputs:

* scores Parquet (SCORES contract): one row per ablation, query and candidate;
* per-query metrics Parquet (METRICS contract), every ablation;
* summary JSON: per ablation the aggregate metrics, delta vs ``full``, raw and corrected
  paired p-values per measure with a ``significant`` flag, queries, zeroed modules,
  padded/real token ratio, wall time and pairs/s; plus the run's identifying fields and
  provenance.

``params`` (the rule's config slice, plain builtins)::

    ablations:    [{name: full, zeroed: []}, {name: mlp_only, zeroed: [[0, q], ...]},
                   {name: svd_r2, zeroed: [], truncate_rank: 2}, ...]
    metrics:      ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
    significance: {test: wilcoxon, correction: holm, alpha: 0.05}
    scoring:      {batch_tokens: 16384, max_length: 256, dtype: float32}
    model, adapter, step, sweep, split: identifying fields, copied into the summary
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope import fileio, metrics, provenance, stats
from lorascope.ablation import FULL, Ablation
from lorascope.contracts import (
    CANDIDATES,
    METRICS,
    QRELS,
    QUERIES,
    SCORES,
    ParquetSink,
    read_table,
    write_table,
)
from lorascope.data.common import split_paths

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from lorascope.roles import ArchitectureRoles

log = logging.getLogger(__name__)

STAGE = "evaluate"
RUN_FIELDS = ("model", "adapter", "step", "sweep", "split")
#: The reproduction check re-scores the plan's first batches up to at least this many pairs.
REPRODUCTION_PAIRS = 64


class ReproductionError(RuntimeError):
    """Re-scoring ``full`` after the sweep did not reproduce its first scores."""


@dataclass(frozen=True)
class EvalSettings:
    """The evaluate stage's parsed params.

    Attributes:
        ablations: the sweep, ``full`` first (added when the params lack it).
        measures: ir-measures names.
        test: paired test, ``wilcoxon`` or ``ttest``.
        correction: ``holm``, ``bonferroni`` or ``none`` over the sweep's ablations.
        alpha: significance level applied to corrected p-values.
        batch_tokens: token budget per scoring batch (padded tokens).
        max_length: token cut-off of a pair (the training one).
        dtype: weights dtype (``float32``, ``bfloat16``, ``float16``).
    """

    ablations: tuple[Ablation, ...]
    measures: tuple[str, ...]
    test: str = "wilcoxon"
    correction: str = "holm"
    alpha: float = 0.05
    batch_tokens: int = 16384
    max_length: int = 256
    dtype: str = "float32"

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
        measures = params.get("metrics")
        if not isinstance(measures, list) or not measures:
            raise ValueError("evaluate params: 'metrics' must be a non-empty list of measures")
        sig = dict(params.get("significance") or {})
        scoring = dict(params.get("scoring") or {})
        unknown = {f"significance.{k}" for k in set(sig) - {"test", "correction", "alpha"}}
        unknown |= {f"scoring.{k}" for k in set(scoring) - {"batch_tokens", "max_length", "dtype"}}
        if unknown:
            raise ValueError(f"evaluate params: unknown keys {sorted(unknown)}")
        settings = cls(
            ablations=tuple(ablations),
            measures=tuple(measures),
            test=sig.get("test", cls.test),
            correction=sig.get("correction", cls.correction),
            alpha=float(sig.get("alpha", cls.alpha)),
            batch_tokens=int(scoring.get("batch_tokens", cls.batch_tokens)),
            max_length=int(scoring.get("max_length", cls.max_length)),
            dtype=scoring.get("dtype", cls.dtype),
        )
        if settings.test not in stats.TESTS:
            raise ValueError(f"evaluate params: significance.test must be one of "
                             f"{', '.join(stats.TESTS)}, got {settings.test!r}")
        if settings.correction not in stats.CORRECTIONS:
            raise ValueError(f"evaluate params: significance.correction must be one of "
                             f"{', '.join(stats.CORRECTIONS)}, got {settings.correction!r}")
        if not 0 < settings.alpha < 1:
            raise ValueError(f"evaluate params: significance.alpha must be in (0, 1), "
                             f"got {settings.alpha}")
        if settings.batch_tokens < 1 or settings.max_length < 1:
            raise ValueError("evaluate params: scoring.batch_tokens and scoring.max_length "
                             "must be positive")
        return settings


# --------------------------------------------------------------------------- loading


def load_adapted(
    base_dir: str | Path, adapter_dir: str | Path, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[torch.nn.Module, Any, ArchitectureRoles]:
    """The base reranker with the adapter (LoRA layers and trained head) loaded, eval mode.

    Raises:
        ValueError: the adapter carries no trained score head (its scores would come from
            the base loader's randomly initialised head).
    """
    import torch
    from peft import PeftModel
    from peft.utils import ModulesToSaveWrapper

    from lorascope.models.reranker import load_reranker

    torch.manual_seed(0)  # the head load_reranker initialises is replaced by the trained one
    base, tokenizer, arch = load_reranker(base_dir, dtype=dtype, device=device)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.to(device)
    model.eval()
    heads = [name for name, module in model.named_modules()
             if isinstance(module, ModulesToSaveWrapper)]
    if not heads:
        raise ValueError(
            f"adapter {adapter_dir} has no trained score head (modules_to_save "
            f"{list(arch.head_modules)}); its scores would come from an untrained head"
        )
    return model, tokenizer, arch


def read_split(split_dir: str | Path) -> tuple[dict[str, str], list[tuple[str, str, str]], pa.Table]:
    """Queries, candidates ``(qid, docid, text)`` in (qid, rank) order, and qrels."""
    paths = split_paths(Path(split_dir))
    q = read_table(paths["queries"], QUERIES)
    queries = dict(zip(q.column("qid").to_pylist(), q.column("query").to_pylist()))
    c = read_table(paths["candidates"], CANDIDATES, columns=["qid", "docid", "rank", "text"])
    rows = sorted(zip(c.column("qid").to_pylist(), c.column("rank").to_pylist(),
                      c.column("docid").to_pylist(), c.column("text").to_pylist()))
    candidates = [(qid, docid, text) for qid, _, docid, text in rows]
    qrels = read_table(paths["qrels"], QRELS)
    return queries, candidates, qrels


# --------------------------------------------------------------------------- main


def evaluate(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dir: str | Path,
    split_dir: str | Path,
    out_scores: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every ablation of a sweep on a split and write scores, metrics and summary.

    Returns:
        The summary written to ``out_summary``.

    Raises:
        SwitchingError: an ablation zeroes a module the adapter has no LoRA on.
        ReproductionError: ``full`` re-scored after the sweep differs from its first scores.
    """
    from lorascope import switching
    from lorascope.scoring import PreparedPairs

    settings = EvalSettings.from_params(params)
    from lorascope.models.reranker import default_device

    device = default_device()
    started = time.perf_counter()
    model, tokenizer, arch = load_adapted(base_dir, adapter_dir, dtype=settings.dtype,
                                          device=device)
    available = switching.lora_modules(model, arch)
    for ablation in settings.ablations:
        switching.check_present(available.keys(), ablation.zeroed,
                                f"adapter {adapter_dir} (ablation {ablation.name!r})")
    manifest = _adapter_manifest(adapter_dir, base_dir)
    log.info("loaded %s + %s on %s in %.1fs: %d LoRA modules, %d ablations", base_dir,
             adapter_dir, device, time.perf_counter() - started, len(available),
             len(settings.ablations))

    queries, candidates, qrels = read_split(split_dir)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    record = provenance.record(STAGE, params, base_dir=str(base_dir),
                               adapter_dir=str(adapter_dir), split_dir=str(split_dir),
                               device=device, adapter_manifest=manifest)

    runs: dict[str, dict[tuple[str, str], float]] = {}
    timing: dict[str, dict[str, Any]] = {}
    with ParquetSink(out_scores, SCORES, record) as sink:
        for ablation in settings.ablations:
            t0 = time.perf_counter()
            with _applied(model, arch, ablation, available) as energy:
                scores = prepared.score(model, device=device, progress=progress,
                                        desc=ablation.name)
            seconds = time.perf_counter() - t0
            run_stats = prepared.last_stats
            assert run_stats is not None
            runs[ablation.name] = scores
            timing[ablation.name] = {**run_stats.to_dict(), "seconds": round(seconds, 4),
                                     "plan_version": prepared.plan_version,
                                     "energy_kept": _mean(energy.values()) if energy else None}
            log.info("%-24s %d pairs in %.2fs (%.1f pairs/s, padded/real %.3f)",
                     ablation.name, len(scores), seconds, len(scores) / max(seconds, 1e-9),
                     run_stats.padding_ratio)
            sink.write_rows(_score_rows(ablation.name, scores))
        if len(settings.ablations) > 1:  # nothing was switched when `full` is all there is
            _check_reproduction(prepared, model, device, runs[FULL], timing[FULL]["plan_version"])

    per_query = write_metrics(out_metrics, runs, qrels, settings.measures, record)

    summary = _summary(params, settings, per_query, timing, prepared, record)
    summary["seconds_total"] = round(time.perf_counter() - started, 2)
    fileio.write_json(out_summary, summary)
    return summary


def write_metrics(
    out_metrics: str | Path,
    runs: Mapping[str, Mapping[tuple[str, str], float]],
    qrels: Any,
    measures: Sequence[str],
    record: Mapping[str, Any],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-query metrics of every run (ablation name -> scores) written as one METRICS table;
    returns them as ``{ablation: {measure: {qid: value}}}``."""
    per_query = {name: metrics.per_query(qrels, _run(scores), list(measures))
                 for name, scores in runs.items()}
    columns: dict[str, list[Any]] = {"ablation": [], "qid": [], "measure": [], "value": []}
    for name, values in per_query.items():
        for key, col in metrics.to_rows(values, name).items():
            columns[key].extend(col)
    write_table(out_metrics, columns, METRICS, record)
    return per_query


def _adapter_manifest(adapter_dir: str | Path, base_dir: str | Path) -> dict[str, Any] | None:
    """An extracted adapter's manifest, verified against the base model; None for a bare
    peft directory (e.g. a training checkpoint)."""
    from lorascope import adapters

    if not (Path(adapter_dir) / adapters.MANIFEST).is_file():
        return None
    return adapters.verify(adapter_dir, base_dir)


@contextmanager
def _applied(model: Any, arch: ArchitectureRoles, ablation: Ablation,
             available: Mapping[tuple[int, str], Any]) -> Iterator[Mapping[tuple[int, str], float]]:
    """The ablation in force inside the block: its modules zeroed and, with a
    ``truncate_rank``, every other LoRA module truncated; yields the energy kept per truncated
    module (empty without truncation)."""
    from lorascope import switching

    with ExitStack() as stack:
        stack.enter_context(switching.zeroed(model, arch, ablation.zeroed))
        energy: Mapping[tuple[int, str], float] = {}
        if ablation.truncate_rank is not None:
            rest = set(available) - set(ablation.zeroed)
            energy = stack.enter_context(
                switching.truncated(model, arch, rest, ablation.truncate_rank))
        yield energy


def _mean(values: Any) -> float:
    values = list(values)
    return round(sum(values) / len(values), 6)


def reproduction_batches(batches: Sequence[Sequence[int]], min_pairs: int) -> int:
    """How many leading batches of a plan hold at least ``min_pairs`` pairs (all of them when
    the plan holds fewer)."""
    total = 0
    for n, batch in enumerate(batches, start=1):
        total += len(batch)
        if total >= min_pairs:
            return n
    return len(batches)


def _check_reproduction(prepared: Any, model: Any, device: str,
                        first: Mapping[tuple[str, str], float], plan_version: int) -> None:
    """Re-score ``full`` on the plan's first batches (>= REPRODUCTION_PAIRS pairs) and compare.

    While the plan is the one of the first pass, those batches hold the same pairs in the same
    order and padding, so the comparison is bitwise; after an out-of-memory re-plan the shapes
    differ and a relative tolerance of 1e-3 is used.
    """
    n_batches = reproduction_batches(prepared.batches, REPRODUCTION_PAIRS)
    again = prepared.score(model, device=device, progress=False, desc="full again",
                           first_batches=n_batches)
    if prepared.plan_version == plan_version:
        differ = [k for k in again if again[k] != first[k]]
        how = "bitwise"
    else:  # an OOM re-planned the batches: other shapes, so compare with a tolerance
        differ = [k for k in again
                  if abs(again[k] - first[k]) > 1e-3 * max(1.0, abs(first[k]))]
        how = "within 1e-3 (batches were re-planned after an out-of-memory error)"
    if differ:
        k = differ[0]
        raise ReproductionError(
            f"re-scoring '{FULL}' after the sweep changed {len(differ)} of the {len(again)} "
            f"scores checked (e.g. {k}: {first[k]!r} -> {again[k]!r}); switching did not "
            "restore the adapter"
        )
    log.info("full adapter reproduced its scores %s after the sweep on %d of %d pairs "
             "(the plan's first %d batches)", how, len(again), len(first), n_batches)


def _score_rows(name: str, scores: Mapping[tuple[str, str], float]) -> dict[str, list[Any]]:
    return {
        "ablation": [name] * len(scores),
        "qid": [q for q, _ in scores],
        "docid": [d for _, d in scores],
        "score": list(scores.values()),
    }


def _run(scores: Mapping[tuple[str, str], float]) -> list[tuple[str, str, float]]:
    return [(q, d, s) for (q, d), s in scores.items()]


def _summary(
    params: Mapping[str, Any],
    settings: EvalSettings,
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    timing: Mapping[str, Mapping[str, Any]],
    prepared: Any,
    record: Mapping[str, Any],
) -> dict[str, Any]:
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
                    "dtype": settings.dtype, "pairs": len(prepared),
                    "real_tokens": prepared.real_tokens, "padded_tokens": prepared.padded_tokens,
                    "padding_ratio": round(prepared.padding_ratio, 4)},
        "ablations": entries,
        "ablation_order": [a.name for a in settings.ablations],  # the JSON keys get sorted
        "provenance": dict(record),
    }
