"""The ``heads`` stage: every attention head ablated in turn, for the base model and chosen
checkpoints of one run, on a deterministic subset of one split (the loop is :mod:`.ablate`).

Models: step 0 is the *base model*: every LoRA update switched off in place
(:func:`lorascope.core.switching.zeroed`) with the score head of the run's **last** checkpoint
(as the relevance lens reads it: the base has no trained head of its own); the other steps are
the chosen checkpoints, loaded once (base + last checkpoint) and swapped into the same LoRA
layers and head, as every base-vs-checkpoints analysis visits them (:mod:`lorascope.models.run`).
For initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ) step 0 is the
residual model; the summary says so. The split and its subset are read before the model is
loaded, so bad input fails in seconds.

Subset: the first ``queries`` judged queries of the split in qid order, each with its first
``depth`` candidates (:func:`lorascope.data.splits.subset`); the qrels are cut to those
queries, so every mean and test is over them.

Significance: per (step, measure), each head's per-query values are compared with the
unablated model's (paired test ``significance.test``) and the p-values of the step's
``layers x heads`` ablations corrected together (``significance.correction``); significant =
corrected p < ``significance.alpha``.

Outputs: a :data:`~lorascope.analyses.heads.HEADS` Parquet (per step, layer, head, measure:
clean, ablated, drop, p-values), a :data:`~lorascope.analyses.heads.HEADS_QUERIES` Parquet (per
query, the clean rows with layer = head = -1) and a summary JSON (per step the clean values,
the top heads, the significant heads, timings; the heads LoRA made matter; subset, scoring,
precision, provenance).

``params`` (the rule's config slice, plain builtins)::

    model, adapter, split: identifying fields, copied into the outputs
    steps:        [100]          checkpoints ablated besides the base (step 0)
    mode:         zero | mean
    queries, depth: 20, 30       the subset (null: all)
    metrics:      ["nDCG@10", "RR(rel=2)"]
    significance: {test: wilcoxon, correction: holm, alpha: 0.05}
    scoring:      {batch_tokens: 16384, max_length: 256, precision: fp32}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.analyses.heads import CLEAN, HEADS, HEADS_QUERIES
from lorascope.core import fileio, metrics, provenance, stats
from lorascope.core.contracts import write_table
from lorascope.core.precision import describe
from lorascope.core.results import ScoringSettings, UsesScoring, measures_param, significance_param
from lorascope.models.run import BASE_STEP, load_run, read_run, visit

log = logging.getLogger(__name__)

STAGE = "heads"
RUN_FIELDS = ("model", "adapter", "split")
MODES = ("zero", "mean")
#: Heads listed per step in the summary (by drop of the first measure).
TOP_HEADS = 10
PARAM_KEYS = frozenset({*RUN_FIELDS, "steps", "mode", "queries", "depth", "metrics",
                        "significance", "scoring"})


@dataclass(frozen=True)
class HeadsSettings(UsesScoring):
    """The heads stage's parsed params.

    Attributes:
        steps: checkpoints ablated besides the base model (``()``: the last given one).
        mode: ``zero`` or ``mean`` ablation.
        queries, depth: the split's subset (None: all).
        measures: ir-measures names; the first orders the summary's top heads.
        test, correction, alpha: the paired test, its correction over a step's heads, the level.
        scoring: how pairs are batched and the model is loaded.
    """

    measures: tuple[str, ...]
    steps: tuple[int, ...] = ()
    mode: str = "zero"
    queries: int | None = None
    depth: int | None = None
    test: str = "wilcoxon"
    correction: str = "holm"
    alpha: float = 0.05
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> HeadsSettings:
        """Parse and check the params, with an error naming the offending key."""
        unknown = sorted(set(params) - PARAM_KEYS)
        if unknown:
            raise ValueError(f"heads params: unknown keys {unknown}; known: {sorted(PARAM_KEYS)}")
        measures = measures_param(params, "heads")
        test, correction, alpha = significance_param(params, "heads")
        steps = params.get("steps") or []
        if (not isinstance(steps, list) or len(set(steps)) != len(steps)
                or not all(_positive_int(s) for s in steps)):
            raise ValueError(f"heads params: 'steps' must be a list of distinct checkpoint steps "
                             f"(ints >= 1; step {BASE_STEP}, the base, is always scored), "
                             f"got {steps!r}")
        mode = params.get("mode", cls.mode)
        if mode not in MODES:
            raise ValueError(f"heads params: 'mode' must be one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        for key in ("queries", "depth"):
            value = params.get(key)
            if value is not None and not _positive_int(value):
                raise ValueError(f"heads params: '{key}' must be a positive int or null, "
                                 f"got {value!r}")
        settings = cls(
            measures=tuple(measures),
            steps=tuple(sorted(int(s) for s in steps)),
            mode=mode,
            queries=params.get("queries"),
            depth=params.get("depth"),
            test=test,
            correction=correction,
            alpha=alpha,
            scoring=ScoringSettings.from_params(params.get("scoring"), "heads"),
        )
        return settings


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _subset_qrels(qrels: Any, qids: set[str]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return qrels.filter(pc.is_in(qrels["qid"], value_set=pa.array(sorted(qids), pa.string())))


def heads(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dirs_by_step: Mapping[int, str | Path],
    split_dir: str | Path,
    out_parquet: str | Path,
    out_summary: str | Path,
    *,
    out_per_query: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ablate every attention head of the base model and of each of ``params["steps"]``.

    ``adapter_dirs_by_step`` holds the ablated checkpoints and the run's last one (its score
    head serves the base model: the deepest step given is taken as the last). Writes the HEADS
    Parquet, optionally the HEADS_QUERIES Parquet and the summary JSON, each atomically,
    provenance inside.

    Returns:
        The summary written to ``out_summary``.

    Raises:
        ValueError: bad params (naming the key), a step with no checkpoint given, checkpoints
            of different runs.
        RestorationError: the unablated model's scores changed after the ablations.
    """
    from lorascope.analyses.heads.ablate import score_heads
    from lorascope.core import switching
    from lorascope.core.heads import head_layout
    from lorascope.core.scoring import PreparedPairs
    from lorascope.data.splits import read_split, subset
    from lorascope.models.reranker import default_device

    settings = HeadsSettings.from_params(params)
    run = read_run(adapter_dirs_by_step, base_dir, STAGE)
    checkpoints, last_step, last_dir = run.checkpoints, run.last_step, run.last_dir
    chosen = run.check_steps(list(settings.steps) or [last_step], "heads")
    # the split and its subset before the model: bad input fails in seconds
    queries, candidates, qrels = read_split(split_dir)
    candidates = subset(candidates, qrels, queries=settings.queries, depth=settings.depth)
    qids = {qid for qid, _, _ in candidates}
    qrels = _subset_qrels(qrels, qids)

    device = default_device()
    precision = settings.scoring.resolve(device)
    started = time.perf_counter()
    model, tokenizer, arch, load_seconds = load_run(run, base_dir, dtype=precision.dtype,
                                                    device=device,
                                                    attention=precision.attention)
    modules = switching.lora_modules(model, arch)
    layout = head_layout(model, arch)
    log.info("loaded %s + %s (step %d) on %s in %.1fs: %d layers x %d heads, %d LoRA modules",
             base_dir, last_dir, last_step, device, load_seconds, layout.layers, layout.heads,
             len(modules))

    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    record = provenance.record(
        STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir), device=device,
        adapter_dirs={str(s): str(d) for s, d in checkpoints},
        adapter_manifests={str(s): m for s, m in run.manifests.items()},
        base_head_step=last_step, precision=describe(precision),
    )

    measures = list(settings.measures)
    per_query: dict[int, dict[tuple[int, int], dict[str, dict[str, float]]]] = {}
    per_step: dict[int, dict[str, Any]] = {}
    with closing(visit(model, arch, run, chosen, device, stage=STAGE)) as visited:
        for step, swap_seconds in visited:
            desc = "heads base" if step == BASE_STEP else f"heads step {step}"
            scored = score_heads(
                prepared, model, arch, mode=settings.mode,  # type: ignore[arg-type]
                device=device, progress=progress, desc=desc)
            t1 = time.perf_counter()
            values = {(CLEAN, CLEAN): metrics.per_query(qrels, _run(scored.clean), measures)}
            for head, scores in scored.ablated.items():
                values[head] = metrics.per_query(qrels, _run(scores), measures)
            per_query[step] = values
            metric_seconds = time.perf_counter() - t1
            resumed = [b for b in scored.resumed_at.values() if b is not None]
            per_step[step] = {
                "step": step,
                "clean_seconds": round(scored.clean_seconds, 3),
                "ablation_seconds": round(scored.ablation_seconds, 3),
                "swap_seconds": round(swap_seconds, 4),
                "metric_seconds": round(metric_seconds, 3),
                "ablations": len(scored.ablated),
                "resumed": len(resumed),
                "blocks_skipped_fraction": round(sum(resumed) / (layout.layers *
                                                                 max(1, len(scored.ablated))), 4),
                "cache_bytes": scored.cache_bytes,
                "restored": True,
            }
            log.info("%s: %d heads x %d pairs in %.1fs (+ clean %.1fs), %d resumed", desc,
                     len(scored.ablated), len(prepared), scored.ablation_seconds,
                     scored.clean_seconds, len(resumed))

    steps = [BASE_STEP] + sorted(chosen)
    rows = head_rows(per_query, steps, settings)
    fields = {k: str(params.get(k, "")) for k in RUN_FIELDS}
    write_table(out_parquet, _table(fields, settings.mode, rows), HEADS, record)
    if out_per_query is not None:
        write_table(out_per_query, _query_rows(fields, settings.mode, steps, per_query),
                    HEADS_QUERIES, record)
    primary = measures[0]
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        per_step[step]["clean"] = {m: next(r["clean"] for r in mine if r["measure"] == m)
                                   for m in measures}
        per_step[step]["significant_heads"] = {
            m: [[r["layer"], r["head"]] for r in mine if r["measure"] == m and r["significant"]]
            for m in measures}
        per_step[step]["top_heads"] = top_heads(mine, primary, TOP_HEADS)
    summary = {
        **{k: params[k] for k in RUN_FIELDS if k in params},
        "mode": settings.mode,
        "measures": measures,
        "steps": steps,
        "layout": {"layers": layout.layers, "heads": layout.heads, "head_dim": layout.head_dim,
                   "architecture": arch.model_type},
        "numbering": "layer = 0-based block index (as the LoRA modules); head = 0-based query "
                     "head; drop = clean - ablated (> 0: the head helps)",
        "base": {"step": BASE_STEP, "lora": "every LoRA update switched off",
                 "head_from_step": last_step, "original_base": run.original_base},
        "significance": {"test": settings.test, "correction": settings.correction,
                         "alpha": settings.alpha,
                         "family": "the layers x heads ablations of one step, per measure"},
        "subset": {"queries": settings.queries, "depth": settings.depth,
                   "judged_queries": len({q for q in qrels.column("qid").to_pylist()}),
                   "pairs": len(prepared)},
        "per_step": [per_step[s] for s in steps],
        "lora_made_matter": {str(s): lora_made_matter(rows, s, primary, TOP_HEADS)
                             for s in steps if s != BASE_STEP},
        "scoring": {"pairs": len(prepared), "batch_tokens": prepared.batch_tokens,
                    "max_length": settings.max_length, "precision": precision.resolved,
                    "real_tokens": prepared.real_tokens, "padded_tokens": prepared.padded_tokens,
                    "padding_ratio": round(prepared.padding_ratio, 4), "device": device},
        "loading": {"strategy": "base + last checkpoint loaded once; other checkpoints "
                                "swapped in with set_peft_model_state_dict",
                    "seconds": round(load_seconds, 3)},
        "seconds_total": round(time.perf_counter() - started, 2),
        "provenance": dict(record),
    }
    fileio.write_json(out_summary, summary)
    return summary


def _run(scores: Mapping[tuple[str, str], float]) -> list[tuple[str, str, float]]:
    return [(q, d, s) for (q, d), s in scores.items()]


PerQuery = Mapping[int, Mapping[tuple[int, int], Mapping[str, Mapping[str, float]]]]


def head_rows(per_query: PerQuery, steps: Sequence[int], settings: HeadsSettings
              ) -> list[dict[str, Any]]:
    """Per step, head (layer-major) and measure: clean and ablated means, the drop, the paired
    test's p-value and its correction over the step's heads."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        values = per_query[step]
        clean = values[(CLEAN, CLEAN)]
        clean_means = metrics.aggregate(clean)
        ablations = sorted(h for h in values if h != (CLEAN, CLEAN))
        for m in settings.measures:
            raw = {f"{layer}.{head}": stats.compare(clean[m], values[(layer, head)][m],
                                                    settings.test)  # type: ignore[arg-type]
                   for layer, head in ablations}
            adjusted = stats.correct(raw, settings.correction)  # type: ignore[arg-type]
            for layer, head in ablations:
                name = f"{layer}.{head}"
                ablated = metrics.aggregate({m: values[(layer, head)][m]})[m]
                rows.append({"step": step, "layer": layer, "head": head, "measure": m,
                             "clean": clean_means[m], "ablated": ablated,
                             "drop": clean_means[m] - ablated, "p_value": raw[name],
                             "p_adjusted": adjusted[name],
                             "significant": adjusted[name] < settings.alpha,
                             "queries": len(clean[m])})
    return rows


def top_heads(rows: Sequence[Mapping[str, Any]], measure: str, n: int) -> list[dict[str, Any]]:
    """The ``n`` heads of the largest drop of ``measure`` (ties: shallower, lower head first)."""
    mine = sorted((r for r in rows if r["measure"] == measure),
                  key=lambda r: (-r["drop"], r["layer"], r["head"]))
    return [{"layer": r["layer"], "head": r["head"], "drop": round(r["drop"], 6),
             "p_adjusted": r["p_adjusted"], "significant": r["significant"]} for r in mine[:n]]


def lora_made_matter(rows: Sequence[Mapping[str, Any]], step: int, measure: str, n: int
                     ) -> list[dict[str, Any]]:
    """The ``n`` heads whose drop grew most from the base model to ``step``: drop at ``step``
    minus drop at the base (both from ``rows``)."""
    base = {(r["layer"], r["head"]): r for r in rows
            if r["step"] == BASE_STEP and r["measure"] == measure}
    out = []
    for r in rows:
        if r["step"] == step and r["measure"] == measure and (r["layer"], r["head"]) in base:
            b = base[(r["layer"], r["head"])]
            out.append({"layer": r["layer"], "head": r["head"],
                        "difference": round(r["drop"] - b["drop"], 6),
                        "drop": round(r["drop"], 6), "base_drop": round(b["drop"], 6),
                        "significant": r["significant"], "base_significant": b["significant"]})
    out.sort(key=lambda e: (-e["difference"], e["layer"], e["head"]))
    return out[:n]


def _table(run: Mapping[str, str], mode: str, rows: Sequence[Mapping[str, Any]]
           ) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in HEADS.columns}
    for row in rows:
        for name in RUN_FIELDS:
            columns[name].append(run[name])
        columns["mode"].append(mode)
        for name in HEADS.columns[len(RUN_FIELDS) + 1:]:
            columns[name].append(row[name])
    return columns


def _query_rows(run: Mapping[str, str], mode: str, steps: Sequence[int], per_query: PerQuery
                ) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in HEADS_QUERIES.columns}
    for step in steps:
        for (layer, head), values in sorted(per_query[step].items()):
            for measure, by_query in values.items():
                for qid, value in sorted(by_query.items()):
                    for name in RUN_FIELDS:
                        columns[name].append(run[name])
                    columns["mode"].append(mode)
                    columns["step"].append(step)
                    columns["layer"].append(layer)
                    columns["head"].append(head)
                    columns["measure"].append(measure)
                    columns["qid"].append(qid)
                    columns["value"].append(value)
    return columns
