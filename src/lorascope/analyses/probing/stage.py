"""The ``probing`` stage: per-layer ridge probes of IR features for the base model and chosen
checkpoints of one run on (a deterministic part of) one split.

Models, as the lens loads them (:mod:`lorascope.models.run`): the base model and the
run's last checkpoint are loaded once (:func:`lorascope.models.adapted.load_adapted`), the other
probed checkpoints swapped in place (:func:`~lorascope.models.adapted.swap_checkpoint`); step 0
is the *base model*: every LoRA update switched off (:func:`lorascope.core.switching.zeroed`)
with the last checkpoint's head - the lens's step 0. The head never changes what a probe sees
(the states stop before it: BERT's pooler is part of the head, a decoder's final norm is a base
weight); it only serves the check that the layer-L states reproduce the model's score.

Per step: one forward pass over the pairs collects every layer's read-token state
(:mod:`.states`); per layer the cross-validated probes (:mod:`.probes`) predict the pairs'
features (:mod:`.features`: of the part of each passage the model sees, cut at
``scoring.max_length`` tokens as scoring cuts it; the summary counts the passages cut), on the
same query-grouped outer folds for every step and layer. The split, the subset, the folds
(outer, and enough queries in each outer training fold for ``inner_folds``) and the collection
statistics are read and checked before the model is loaded.

Outputs: the :data:`~lorascope.analyses.probing.PROBING` Parquet (one row per step, layer and
feature), the :data:`~lorascope.analyses.probing.PROBING_FOLDS` Parquet (per fold), and a
summary JSON (per step and feature the R² by layer, the best layer and the first layer whose
R² reaches ``threshold``; the subset, the IDF source, the folds, timings, provenance).

``params`` (the rule's config slice, plain builtins)::

    model, adapter, split: identifying fields, copied into the outputs
    steps:       [25, 50, 100]   checkpoints probed besides the base (null: every one given)
    queries:     20              the first N judged queries (null: all)
    depth:       20              each query's first N candidates (null: all)
    folds:       5
    inner_folds: 3
    alphas:      [0.1, 1, 10, 100, 1e3, 1e4, 1e5, 1e6]
    idf:         shipped         or split
    threshold:   0.5
    scoring:     {batch_tokens: 16384, max_length: 256, precision: fp32}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.analyses.probing import PROBING, PROBING_FOLDS
from lorascope.analyses.probing.features import FEATURES, IDF_SOURCES
from lorascope.analyses.probing.probes import readable_from
from lorascope.core import fileio, provenance
from lorascope.core.contracts import write_table
from lorascope.core.precision import describe
from lorascope.core.results import ScoringSettings, UsesScoring
from lorascope.models.run import BASE_STEP, load_run, read_run, visit

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

STAGE = "probing"
RUN_FIELDS = ("model", "adapter", "split")
PARAM_KEYS = frozenset({*RUN_FIELDS, "steps", "queries", "depth", "folds", "inner_folds",
                        "alphas", "idf", "threshold", "scoring"})
#: Wide enough that a feature a layer does not encode hits a near-constant probe (measured on
#: MiniLM: BM25's inner CV chose 1e4-1e6, passage length's 10-100).
DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)


def _positive_int(params: Mapping[str, Any], key: str, default: int | None, minimum: int = 1
                  ) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"probing params: '{key}' must be an int >= {minimum}"
                         f"{' or null' if default is None else ''}, got {value!r}")
    return value


@dataclass(frozen=True)
class ProbingSettings(UsesScoring):
    """The probing stage's parsed params (see the module docstring)."""

    steps: tuple[int, ...] | None = None
    queries: int | None = None
    depth: int | None = None
    folds: int = 5
    inner_folds: int = 3
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    idf: str = "shipped"
    threshold: float = 0.5
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ProbingSettings:
        """Parse and check the params, with an error naming the offending key."""
        unknown = sorted(set(params) - PARAM_KEYS)
        if unknown:
            raise ValueError(f"probing params: unknown keys {unknown}; known: "
                             f"{sorted(PARAM_KEYS)}")
        steps = params.get("steps")
        if steps is not None:
            if (not isinstance(steps, list) or not steps
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s > BASE_STEP
                               for s in steps)):
                raise ValueError(f"probing params: 'steps' must be null or a non-empty list of "
                                 f"checkpoint steps > {BASE_STEP} (the base model, step "
                                 f"{BASE_STEP}, is always probed), got {steps!r}")
            if len(set(steps)) != len(steps):
                raise ValueError(f"probing params: 'steps' lists a step twice: {steps}")
        alphas = params.get("alphas", list(DEFAULT_ALPHAS))
        if (not isinstance(alphas, list) or not alphas
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0
                           for a in alphas)):
            raise ValueError(f"probing params: 'alphas' must be a non-empty list of positive "
                             f"numbers, got {alphas!r}")
        idf = params.get("idf", cls.idf)
        if idf not in IDF_SOURCES:
            raise ValueError(f"probing params: 'idf' must be one of {', '.join(IDF_SOURCES)}, "
                             f"got {idf!r}")
        threshold = params.get("threshold", cls.threshold)
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not 0 < threshold <= 1):
            raise ValueError(f"probing params: 'threshold' must be in (0, 1], got {threshold!r}")
        return cls(
            steps=tuple(sorted(steps)) if steps is not None else None,
            queries=_positive_int(params, "queries", None),
            depth=_positive_int(params, "depth", None),
            folds=_positive_int(params, "folds", cls.folds, 2) or cls.folds,
            inner_folds=_positive_int(params, "inner_folds", cls.inner_folds, 2)
            or cls.inner_folds,
            alphas=tuple(float(a) for a in alphas),
            idf=idf,
            threshold=float(threshold),
            scoring=ScoringSettings.from_params(params.get("scoring"), "probing"),
        )


def probing(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dirs_by_step: Mapping[int, str | Path],
    split_dir: str | Path,
    out_parquet: str | Path,
    out_folds: str | Path,
    out_summary: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Probe the base model and the chosen checkpoints of one run on (part of) a split.

    ``adapter_dirs_by_step`` holds the probed checkpoints and the run's last one (whose head
    the base model is read with; the last step is the highest given). Writes the PROBING and
    PROBING_FOLDS Parquets and the summary JSON, each atomically, provenance inside.

    Returns:
        The summary written to ``out_summary``.

    Raises:
        ValueError: bad params (naming the key), checkpoints of different runs, fewer queries
            than folds, an outer training fold with fewer queries than ``inner_folds``.
        ReadoutError: the collected layer-L states do not reproduce the model's own scores.
    """
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from lorascope.analyses.probing.features import (
        collection_stats,
        feature_matrix,
        seen_passages,
    )
    from lorascope.analyses.probing.probes import check_inner_folds, probe_layer, query_folds
    from lorascope.analyses.probing.states import collect_states
    from lorascope.core.readout import check_final_layer
    from lorascope.core.scoring import PreparedPairs
    from lorascope.data.splits import read_split, subset
    from lorascope.models.reranker import default_device

    started = time.perf_counter()
    settings = ProbingSettings.from_params(params)
    run = read_run(adapter_dirs_by_step, base_dir, STAGE)
    checkpoints, last_step, last_dir = run.checkpoints, run.last_step, run.last_dir
    steps = run.check_steps(list(run.dirs) if settings.steps is None else settings.steps, STAGE)

    # the data, the statistics and the folds first: their errors come before any model loading
    queries, candidates, qrels = read_split(split_dir)
    pairs = subset(candidates, qrels, queries=settings.queries, depth=settings.depth)
    qids = [q for q, _, _ in pairs]
    folds = query_folds(qids, settings.folds)
    check_inner_folds(qids, folds, settings.inner_folds, settings.alphas)
    t0 = time.perf_counter()
    stats = collection_stats(settings.idf, candidates)
    feature_seconds = time.perf_counter() - t0

    device = default_device()
    precision = settings.scoring.resolve(device)
    model, tokenizer, arch, load_seconds = load_run(run, base_dir, dtype=precision.dtype,
                                                    device=device,
                                                    attention=precision.attention)
    t0 = time.perf_counter()
    seen, cut = seen_passages(tokenizer, arch, queries, pairs, settings.max_length)
    Y = feature_matrix(queries, pairs, stats, seen)
    feature_seconds += time.perf_counter() - t0
    log.info("%d pairs of %d queries (of %d candidates), %d passages cut at %d tokens; "
             "features from %s statistics (%d passages, avgdl %.1f) in %.1fs", len(pairs),
             len(set(qids)), len(candidates), cut, settings.max_length, settings.idf,
             stats.documents, stats.avgdl, feature_seconds)
    prepared = PreparedPairs.build(tokenizer, arch, queries, pairs,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    if list(prepared.keys) != [(q, d) for q, d, _ in pairs]:
        raise RuntimeError("probing: the prepared pairs are not in the subset's order")
    record = provenance.record(
        STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir), device=device,
        adapter_dirs={str(s): str(d) for s, d in checkpoints},
        adapter_manifests={str(s): m for s, m in run.manifests.items()},
        base_head_step=last_step, precision=describe(precision), idf=settings.idf,
    )

    fields = {k: str(params.get(k, "")) for k in RUN_FIELDS}
    rows: dict[str, list[Any]] = {name: [] for name in PROBING.columns}
    fold_rows: dict[str, list[Any]] = {name: [] for name in PROBING_FOLDS.columns}
    per_step: dict[int, dict[str, Any]] = {}
    budget = settings.batch_tokens
    depth = 0
    with closing(visit(model, arch, run, steps, device, stage=STAGE)) as visited:
        for step, swap_seconds in visited:
            t0 = time.perf_counter()
            desc = f"states step {step}" + (" (base)" if step == BASE_STEP else "")
            layers = collect_states(prepared, model, arch, device=device, batch_tokens=budget,
                                    progress=progress, desc=desc)
            budget = layers.stats["batch_tokens"]
            diff = check_final_layer(layers.check, precision.dtype,
                                     f"step {step} of {last_dir.parent}")
            forward_seconds = swap_seconds + time.perf_counter() - t0
            t1 = time.perf_counter()
            depth = layers.depth
            curves: dict[str, dict[int, float]] = {f: {} for f in FEATURES}
            # the BLAS under scikit-learn uses as many threads as torch was given (--threads)
            with threadpool_limits(limits=torch.get_num_threads()):
                for layer in tqdm(range(1, depth + 1), desc=f"probes step {step}",
                                  disable=not progress):
                    result = probe_layer(layers.states[:, layer - 1].astype(np.float64), Y, qids,
                                         folds, settings.alphas, settings.inner_folds)
                    _add_rows(rows, fold_rows, fields, step, layer, result, folds, qids, settings,
                              len(pairs))
                    for j, feature in enumerate(FEATURES):
                        curves[feature][layer] = float(result.r2[j])
            probe_seconds = time.perf_counter() - t1
            per_step[step] = _step_entry(step, curves, settings.threshold, forward_seconds,
                                         probe_seconds, diff)
            log.info("step %-6d %d pairs x %d layers: states %.1fs, probes %.1fs; bm25 R² by layer "
                     "%s, readable (R² >= %g) from layer %s", step, len(pairs), depth,
                     forward_seconds, probe_seconds,
                     " ".join(f"{v:.3f}" for v in curves["bm25"].values()), settings.threshold,
                     per_step[step]["readable_from"]["bm25"])
            del layers

    write_table(out_parquet, rows, PROBING, record)
    write_table(out_folds, fold_rows, PROBING_FOLDS, record)
    summary = {
        **{k: params[k] for k in RUN_FIELDS if k in params},
        "features": list(FEATURES),
        "feature_definitions": {
            "passage": f"the part the model sees: cut at max_length = {settings.max_length} "
                       "tokens with the query (a word the cut splits left out); subset."
                       "passages_cut counts the passages cut",
            "bm25": "BM25 (k1 0.9, b 0.4) of the query's terms in the passage",
            "tf": "sum over the query's terms of their frequency in the passage",
            "coverage": "sum of idf of the query's terms the passage contains / sum of idf of "
                        "all the query's terms (terms with multiplicity)",
            "length": "passage length in terms",
        },
        "idf": {"source": settings.idf, "documents": stats.documents,
                "avgdl": round(stats.avgdl, 4)},
        "depth": depth,
        "layers": list(range(1, depth + 1)),
        "layer_numbering": "l = output of block l (block index l - 1 in ablations); the "
                           "embeddings (layer 0) are left out",
        "states": "the read token's state; decoders: the final norm applied to every layer "
                  "(as the lens reads it), BERT: the blocks' outputs",
        "readout": {"architecture": arch.model_type, "token": _token(arch)},
        "steps": sorted(per_step),
        "base": {"step": BASE_STEP, "lora": "every LoRA update switched off",
                 "head_from_step": last_step, "original_base": run.original_base},
        "subset": {"queries": settings.queries, "depth": settings.depth,
                   "pairs": len(pairs), "queries_used": len(set(qids)),
                   "passages_cut": cut},
        "probe": {"model": "Pipeline(StandardScaler, Ridge), one ridge per feature",
                  "folds": settings.folds, "grouping": "GroupKFold by qid, no shuffling",
                  "inner_folds": settings.inner_folds if len(settings.alphas) > 1 else None,
                  "alphas": list(settings.alphas),
                  "r2": "sklearn r2_score of the pooled out-of-fold predictions"},
        "threshold": settings.threshold,
        "per_step": [per_step[s] for s in sorted(per_step)],
        "scoring": {"pairs": len(prepared), "batch_tokens": budget,
                    "max_length": settings.max_length, "precision": precision.resolved,
                    "device": device},
        "loading": {"strategy": "base + last checkpoint loaded once; other checkpoints "
                                "swapped in with set_peft_model_state_dict",
                    "seconds": round(load_seconds, 3)},
        "feature_seconds": round(feature_seconds, 3),
        "seconds_total": round(time.perf_counter() - started, 2),
        "provenance": dict(record),
    }
    fileio.write_json(out_summary, summary)
    return summary


def _token(arch: Any) -> str:
    from lorascope.core.readout import readout_for

    return {"last": "last non-pad token", "first": "[CLS]"}[readout_for(arch).token]


def _add_rows(rows: dict[str, list[Any]], fold_rows: dict[str, list[Any]],
              run: Mapping[str, str], step: int, layer: int, result: Any,
              folds: Sequence[tuple[np.ndarray, np.ndarray]], qids: Sequence[str],
              settings: ProbingSettings, pairs: int) -> None:
    import numpy as np

    groups = np.asarray(qids)
    for j, feature in enumerate(FEATURES):
        keys = {**run, "step": step, "layer": layer, "feature": feature}
        for name, value in keys.items():
            rows[name].append(value)
        rows["r2"].append(float(result.r2[j]))
        rows["r2_fold_mean"].append(float(np.mean(result.fold_r2[:, j])))
        rows["r2_fold_std"].append(float(np.std(result.fold_r2[:, j])))
        rows["alpha"].append(float(np.median(result.fold_alpha[:, j])))
        rows["folds"].append(len(folds))
        rows["pairs"].append(pairs)
        rows["queries"].append(len(set(qids)))
        rows["idf"].append(settings.idf)
        for f, (train, test) in enumerate(folds):
            for name, value in keys.items():
                fold_rows[name].append(value)
            fold_rows["fold"].append(f)
            fold_rows["r2"].append(float(result.fold_r2[f, j]))
            fold_rows["alpha"].append(float(result.fold_alpha[f, j]))
            fold_rows["train_pairs"].append(len(train))
            fold_rows["test_pairs"].append(len(test))
            fold_rows["test_queries"].append(len(set(groups[test].tolist())))


def _step_entry(step: int, curves: Mapping[str, Mapping[int, float]], threshold: float,
                forward_seconds: float, probe_seconds: float, final_diff: float
                ) -> dict[str, Any]:
    """One step of the summary: per feature the R² by layer, the best layer (ties: the
    shallowest) and the first layer reaching ``threshold``."""
    best = {f: max(sorted(c), key=lambda layer, c=c: (c[layer], -layer))
            for f, c in curves.items()}
    return {
        "step": step,
        "r2_by_layer": {f: [round(c[layer], 6) for layer in sorted(c)]
                        for f, c in curves.items()},
        "best_layer": best,
        "best_r2": {f: curves[f][best[f]] for f in curves},
        "readable_from": {f: readable_from(c, threshold) for f, c in curves.items()},
        "forward_seconds": round(forward_seconds, 3),
        "probe_seconds": round(probe_seconds, 3),
        "final_layer_max_rel_diff": final_diff,
    }
