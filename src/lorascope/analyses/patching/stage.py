"""The ``patching`` stage: axiomatic perturbations and activation patching of the base model and
chosen checkpoints of one run on a deterministic subset of one split.

Steps: ``0`` = the base model (every LoRA update switched off with
:func:`lorascope.core.switching.zeroed`, the trained head of the run's last checkpoint - the
lens's step 0) and each of ``steps`` (default: the last checkpoint). The checkpoints must be
of one run (:func:`lorascope.models.run.read_run`: same adapter config, manifests verified
against the base); the base model and the last checkpoint are loaded once
(:func:`~lorascope.models.run.load_run`) and the steps visited in
:func:`~lorascope.models.run.visit`'s order (base, last, others; others swapped in).

Pairs: :func:`lorascope.data.splits.subset` (the first ``queries`` judged queries, their first
``depth`` candidates); the query term's IDF over the split's unique passages (not the shipped
collection probing uses by default), among the query terms occurring in them. The
perturbations (:mod:`.perturb`) are built once per job, from the tokenizer alone, before the
model is loaded; each is scored and patched (:mod:`.patch`) under every step; head patching
only for the perturbations in ``heads``.

Outputs: the :data:`~lorascope.analyses.patching.PATCHING` table (step x perturbation x block x
group), :data:`~lorascope.analyses.patching.PATCHING_HEADS` (step x perturbation x block x
head), :data:`~lorascope.analyses.patching.PATCHING_PAIRS` (every pair's scores) and a summary
JSON (chosen terms, skipped pairs, mean deltas, top heads, timings, precision, provenance).

``params`` (the rule's config slice)::

    model, adapter, split: identifying fields, copied into the outputs
    steps:         [100]         checkpoints besides the base (>= 1 of the run's steps)
    queries: 10, depth: 10       the subset
    perturbations: [tfc1, query_term_removal, length_control]
    heads:         [tfc1]        the perturbations that get head patching
    filler:        the
    tiny_delta:    0.01          flag a perturbation whose mean |delta| is below it
    top_heads:     5             heads listed per step in the summary
    scoring:       {batch_tokens: 16384, max_length: 196, precision: fp32}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.analyses.patching import PATCHING, PATCHING_HEADS, PATCHING_PAIRS
from lorascope.analyses.patching.perturb import GROUPS, PERTURBATIONS
from lorascope.core import fileio, provenance
from lorascope.core.contracts import write_table
from lorascope.core.precision import describe
from lorascope.core.results import ScoringSettings, UsesScoring
from lorascope.models.run import BASE_STEP

if TYPE_CHECKING:
    from lorascope.analyses.patching.patch import PatchScores

log = logging.getLogger(__name__)

STAGE = "patching"
KEY = "analyses.patching"
RUN_FIELDS = ("model", "adapter", "split")
PARAM_KEYS = frozenset({*RUN_FIELDS, "steps", "queries", "depth", "perturbations", "heads",
                        "filler", "tiny_delta", "top_heads", "scoring"})


def _positive_int(params: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{KEY}.{key} must be a positive int, got {value!r}")
    return value


def _names(params: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    value = params.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{KEY}.{key} must be a list of perturbation names, got {value!r}")
    unknown = sorted(set(value) - set(PERTURBATIONS))
    if unknown or len(set(value)) != len(value):
        raise ValueError(f"{KEY}.{key}: unknown or repeated perturbations in {value} "
                         f"(known: {', '.join(PERTURBATIONS)})")
    return tuple(value)


@dataclass(frozen=True)
class PatchingSettings(UsesScoring):
    """The patching stage's parsed params (see the module docstring)."""

    steps: tuple[int, ...] | None
    queries: int | None
    depth: int | None
    perturbations: tuple[str, ...]
    heads: tuple[str, ...]
    filler: str
    tiny_delta: float
    top_heads: int
    scoring: ScoringSettings

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PatchingSettings:
        """Parse and check the params, with an error naming the offending key."""
        unknown = sorted(set(params) - PARAM_KEYS)
        if unknown:
            raise ValueError(f"{KEY}: unknown keys {unknown}; known: {sorted(PARAM_KEYS)}")
        steps = params.get("steps")
        if steps is not None and (not isinstance(steps, list) or not steps or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > BASE_STEP
                for s in steps)):
            raise ValueError(f"{KEY}.steps must be a non-empty list of checkpoint steps > "
                             f"{BASE_STEP} (step {BASE_STEP}, the base model, is always in), "
                             f"got {steps!r}")
        perturbations = _names(params, "perturbations", PERTURBATIONS)
        if not perturbations:
            raise ValueError(f"{KEY}.perturbations must name at least one perturbation")
        heads = _names(params, "heads", ("tfc1",))
        missing = sorted(set(heads) - set(perturbations))
        if missing:
            raise ValueError(f"{KEY}.heads names {missing}, not in {KEY}.perturbations")
        filler = params.get("filler", "the")
        if not isinstance(filler, str) or not filler.strip() or " " in filler.strip():
            raise ValueError(f"{KEY}.filler must be one word, got {filler!r}")
        tiny = params.get("tiny_delta", 0.01)
        if isinstance(tiny, bool) or not isinstance(tiny, (int, float)) or tiny < 0:
            raise ValueError(f"{KEY}.tiny_delta must be a number >= 0, got {tiny!r}")
        return cls(
            steps=None if steps is None else tuple(sorted(set(steps))),
            queries=_positive_int(params, "queries", 10),
            depth=_positive_int(params, "depth", 10),
            perturbations=perturbations,
            heads=heads,
            filler=filler.strip(),
            tiny_delta=float(tiny),
            top_heads=_positive_int(params, "top_heads", 5) or 5,
            scoring=ScoringSettings.from_params(params.get("scoring"), KEY),
        )


def patching(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dirs_by_step: Mapping[int, str | Path],
    split_dir: str | Path,
    out_table: str | Path,
    out_heads: str | Path,
    out_pairs: str | Path,
    out_summary: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the perturbations and the activation patching of one run on one split; write the
    four outputs atomically (provenance inside) and return the summary.

    Order: the cheap checks first - params, the checkpoints (one run, manifests verified), the
    split and its subset, the tokenizer alone and the perturbations (a bad filler, a non-fast
    tokenizer, an empty subset fail in seconds) - then the model is loaded."""
    from lorascope.analyses.patching.patch import patch_scores
    from lorascope.analyses.patching.perturb import build_perturbations, load_tokenizer
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.termstats import CollectionStats
    from lorascope.data.splits import read_split, subset
    from lorascope.models.reranker import default_device
    from lorascope.models.run import load_run, read_run, visit

    settings = PatchingSettings.from_params(params)
    run = read_run(adapter_dirs_by_step, base_dir, STAGE)
    steps = ([run.last_step] if settings.steps is None
             else run.check_steps(settings.steps, KEY))
    started = time.perf_counter()
    queries, candidates, qrels = read_split(split_dir)
    # IDF over the split's unique passages (not the shipped collection, as probing's default)
    stats = CollectionStats.from_texts({d: t for _, d, t in candidates}.values())
    chosen = subset(candidates, qrels, queries=settings.queries, depth=settings.depth)
    tokenizer, arch = load_tokenizer(base_dir)
    sets, choices = build_perturbations(
        tokenizer, arch, queries, chosen, stats, names=settings.perturbations,
        filler=settings.filler, max_length=settings.max_length)
    prepared = {}
    for name, pset in sets.items():
        if not len(pset):
            log.warning("%s: no pair left (%s)", name, pset.skipped)
            continue
        prepared[name] = [
            PreparedPairs(pset.keys, features, pad_token_id=int(tokenizer.pad_token_id),
                          batch_tokens=settings.batch_tokens, decoder=arch.decoder)
            for features in (pset.baseline, pset.perturbed)]
    if not prepared:
        raise ValueError(f"{STAGE}: no perturbation has a pair left on {split_dir} "
                         f"({ {n: s.skipped for n, s in sets.items()} })")
    perturb_seconds = time.perf_counter() - started
    log.info("%d pairs of %d queries; perturbations built in %.1fs", len(chosen),
             len({q for q, _, _ in chosen}), perturb_seconds)

    device = default_device()
    precision = settings.scoring.resolve(device)
    model, model_tokenizer, model_arch, load_seconds = load_run(
        run, base_dir, dtype=precision.dtype, device=device, attention=precision.attention)
    if model_arch != arch or model_tokenizer.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(f"{STAGE}: the loaded model's tokenizer or architecture differs from "
                         f"{base_dir}'s")
    del model_tokenizer
    record = provenance.record(
        STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir), device=device,
        adapter_dirs={str(s): str(d) for s, d in run.checkpoints},
        adapter_manifests={str(s): m for s, m in run.manifests.items()},
        base_head_step=run.last_step, precision=describe(precision),
    )
    results: dict[int, dict[str, PatchScores]] = {}
    timings: dict[int, dict[str, Any]] = {}
    with closing(visit(model, arch, run, steps, device)) as states:
        for step, swap_seconds in states:
            t1 = time.perf_counter()
            results[step], timings[step] = {}, {"swap_seconds": round(swap_seconds, 3)}
            for name, (baseline, perturbed) in prepared.items():
                t2 = time.perf_counter()
                results[step][name] = patch_scores(
                    model, arch, baseline, perturbed, sets[name].groups, GROUPS,
                    heads=name in settings.heads, device=device, progress=progress,
                    desc=f"patch step {step} {name}")
                timings[step][name] = {"seconds": round(time.perf_counter() - t2, 3),
                                       **results[step][name].seconds}
                log.info("step %d %s: %d pairs, mean delta %.4f, %.1fs", step, name,
                         len(baseline), float(results[step][name].delta.mean()),
                         timings[step][name]["seconds"])
            timings[step]["seconds"] = round(time.perf_counter() - t1 + swap_seconds, 3)

    run_fields = {k: str(params.get(k, "")) for k in RUN_FIELDS}
    layer_rows, head_rows, pair_rows = _rows(run_fields, results, sets, settings)
    write_table(out_table, layer_rows, PATCHING, record)
    write_table(out_heads, head_rows, PATCHING_HEADS, record)
    write_table(out_pairs, pair_rows, PATCHING_PAIRS, record)
    without_term: dict[str, list[str]] = {}
    for qid, choice in sorted(choices.items()):
        if choice.term is None:
            without_term.setdefault(choice.reason or "", []).append(qid)
    summary = {
        **{k: params[k] for k in RUN_FIELDS if k in params},
        "steps": sorted(results),
        "base": {"step": BASE_STEP, "lora": "every LoRA update switched off",
                 "head_from_step": run.last_step, "original_base": run.original_base},
        "pairs": {"queries": len({q for q, _, _ in chosen}), "candidates": len(chosen),
                  "subset": {"queries": settings.queries, "depth": settings.depth},
                  "queries_without_term": {reason: {"queries": len(qids), "qids": qids}
                                           for reason, qids in without_term.items()}},
        "perturbations": {name: {"pairs": len(sets[name]), "skipped": sets[name].skipped,
                                 "scoring_injected": sets[name].scoring_injected,
                                 "head_patching": name in settings.heads}
                          for name in settings.perturbations},
        "filler": settings.filler,
        "idf": "BM25 IDF over the split's unique passages (df >= 1 required of the query term)",
        "terms": {qid: c.to_dict() for qid, c in sorted(choices.items())},
        "layer_numbering": "layer l = output of block l (0-based, the ablations' numbering; "
                           "the lens's layer l + 1)",
        "groups": {"injected": "the inserted / replaced positions (first: a decoder's last "
                               "token that is injected counts here, its pair's scoring group "
                               "is empty - counted as scoring_injected)",
                   "scoring": "the token the head reads (BERT [CLS], decoders the last token)",
                   "query": "the query's tokens", "passage": "the other passage tokens",
                   "other": "special tokens and the decoders' prompt words"},
        "share": "sum over pairs (patched - baseline) / sum over pairs (perturbed - baseline)",
        "per_step": [_step_entry(step, results[step], settings, timings[step])
                     for step in sorted(results)],
        "scoring": {"batch_tokens": settings.batch_tokens, "max_length": settings.max_length,
                    "precision": precision.resolved, "device": device},
        "loading": {"seconds": round(load_seconds, 3),
                    "perturbations_seconds": round(perturb_seconds, 3)},
        "seconds_total": round(time.perf_counter() - started, 2),
        "provenance": dict(record),
    }
    fileio.write_json(out_summary, summary)
    return summary


def _aggregate(scores: Any, patched: Any, settings: PatchingSettings) -> dict[str, Any]:
    import numpy as np

    from lorascope.analyses.patching.patch import share

    delta = scores.delta
    mean_abs = float(np.mean(np.abs(delta)))
    return {"share": share(patched, scores.baseline, scores.perturbed),
            "mean_delta": float(np.mean(delta)), "mean_abs_delta": mean_abs,
            "pairs": len(delta), "tiny": mean_abs < settings.tiny_delta}


def _rows(run: Mapping[str, str], results: Mapping[int, Mapping[str, PatchScores]],
          sets: Mapping[str, Any], settings: PatchingSettings
          ) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
    layers: dict[str, list] = {c: [] for c in PATCHING.columns}
    heads: dict[str, list] = {c: [] for c in PATCHING_HEADS.columns}
    pairs: dict[str, list] = {c: [] for c in PATCHING_PAIRS.columns}

    def put(columns: dict[str, list], **values: Any) -> None:
        for name, value in {**run, **values}.items():
            columns[name].append(value)

    for step in sorted(results):
        for name, scores in results[step].items():
            keys = sets[name].keys
            common = {"step": step, "perturbation": name}
            for layer in range(scores.residual.shape[0]):
                for g, group in enumerate(scores.groups):
                    put(layers, **common, layer=layer, group=group,
                        **_aggregate(scores, scores.residual[layer, g], settings))
            if scores.heads is not None:
                for layer in range(scores.heads.shape[0]):
                    for head in range(scores.heads.shape[1]):
                        put(heads, **common, layer=layer, head=head,
                            **_aggregate(scores, scores.heads[layer, head], settings))
            sites = [("baseline", -1, "", scores.baseline), ("perturbed", -1, "", scores.perturbed)]
            sites += [("residual", layer, group, scores.residual[layer, g])
                      for layer in range(scores.residual.shape[0])
                      for g, group in enumerate(scores.groups)]
            if scores.heads is not None:
                sites += [("head", layer, str(head), scores.heads[layer, head])
                          for layer in range(scores.heads.shape[0])
                          for head in range(scores.heads.shape[1])]
            for site, layer, unit, values in sites:
                for (qid, docid), value in zip(keys, values.tolist()):
                    put(pairs, **common, qid=qid, docid=docid, site=site, layer=layer,
                        unit=unit, score=value)
    return layers, heads, pairs


def top_heads(scores: PatchScores, count: int) -> list[dict[str, Any]]:
    """The ``count`` heads whose single-head patch recovers the largest share
    (:func:`~lorascope.analyses.patching.patch.rank_heads`)."""
    from lorascope.analyses.patching.patch import rank_heads, share

    if scores.heads is None:
        return []
    cells = [(share(scores.heads[layer, head], scores.baseline, scores.perturbed), layer, head)
             for layer in range(scores.heads.shape[0]) for head in range(scores.heads.shape[1])]
    return [{"layer": layer, "head": head, "share": round(value, 4)}
            for layer, head, value in rank_heads(cells, count)]


def _step_entry(step: int, results: Mapping[str, PatchScores], settings: PatchingSettings,
                timing: Mapping[str, Any]) -> dict[str, Any]:
    import numpy as np

    entry: dict[str, Any] = {"step": step, "perturbations": {}, "timing": dict(timing)}
    for name, scores in results.items():
        delta = scores.delta
        mean_abs = float(np.mean(np.abs(delta)))
        entry["perturbations"][name] = {
            "pairs": len(delta),
            "mean_baseline": round(float(np.mean(scores.baseline)), 6),
            "mean_perturbed": round(float(np.mean(scores.perturbed)), 6),
            "mean_delta": round(float(np.mean(delta)), 6),
            "mean_abs_delta": round(mean_abs, 6),
            "raised": round(float(np.mean(delta > 0)), 4),
            # |sum delta| / sum |delta|: near 0, the changes cancel and shares are unstable
            "coherence": round(abs(float(np.sum(delta))) / max(float(np.sum(np.abs(delta))),
                                                               1e-30), 4),
            "tiny": mean_abs < settings.tiny_delta,
            "top_heads": top_heads(scores, settings.top_heads),
        }
        if entry["perturbations"][name]["tiny"]:
            log.warning("step %d %s: mean |delta| %.2g < tiny_delta %g: its shares are noise",
                        step, name, mean_abs, settings.tiny_delta)
    return entry
