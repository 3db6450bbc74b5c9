"""The ``evaluate`` stage: one adapter checkpoint, one sweep of ablations, one split.

:func:`evaluate` (the stage) checks that the adapter belongs to the base model, resolves the
sweep's declarative spec against the model's depth, roles and the modules the adapter trained
(:func:`lorascope.core.ablation.resolve_sweep`), and hands the ablations to
:func:`score_sweep`, the sweep loop.

The base model and the adapter are loaded **once**; the split's pairs are tokenised and
batched once (:class:`~lorascope.core.scoring.PreparedPairs`); every ablation of the sweep is
scored by switching the selected LoRA layers off in place (:func:`~lorascope.core.switching.zeroed`)
and, for an ablation with a ``truncate_rank`` (the ``svd`` generator), by truncating every other
LoRA module to that rank in place (:func:`~lorascope.core.switching.truncated`). After the sweep
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
  provenance;
* a folder of TREC runs (``runs/`` beside the scores unless named): ``<ablation>.run`` per
  ablation, tagged ``<model>.<adapter>.step-<step>.<sweep>.<ablation>``, exactly the scores the
  metrics were computed from (:mod:`lorascope.core.trec`: trec_eval on them gives the reported
  metrics), written as a whole or not at all.

``params`` of :func:`score_sweep` (the stage's slice with the sweep resolved)::

    ablations:    [{name: full, zeroed: []}, {name: mlp_only, zeroed: [[0, q], ...]},
                   {name: svd_r2, zeroed: [], truncate_rank: 2}, ...]
    metrics:      ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
    significance: {test: wilcoxon, correction: holm, alpha: 0.05}
    scoring:      {batch_tokens: 16384, max_length: 256, dtype: float32}
    model, adapter, step, sweep, split: identifying fields, copied into the summary
                                        (all but split name the runs too)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core import fileio, provenance, trec
from lorascope.core.adapters import verified_manifest
from lorascope.core.ablation import Ablation
from lorascope.core.contracts import SCORES, ParquetSink
from lorascope.core.names import FULL
from lorascope.core.precision import describe
from lorascope.core.prefix import DEFAULT_BUDGET, BlockCache, blocks, cache_bytes
from lorascope.core.reproduction import PAIRS, leading_batches, rescore_first
from lorascope.core.results import EvalSettings, score_rows, sweep_summary, write_metrics
from lorascope.data.splits import read_split

if TYPE_CHECKING:
    from lorascope.core.roles import ArchitectureRoles

log = logging.getLogger(__name__)

STAGE = "evaluate"
#: The reproduction check re-scores the plan's first batches up to at least this many pairs.
REPRODUCTION_PAIRS = PAIRS
#: How many leading batches of a plan the check re-scores (shared with the head ablations).
reproduction_batches = leading_batches


class ReproductionError(RuntimeError):
    """Re-scoring ``full`` after the sweep did not reproduce its first scores."""


def evaluate(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dir: str | Path,
    split_dir: str | Path,
    out_scores: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
    out_runs: str | Path | None = None,
) -> None:
    """The stage: check the adapter belongs to this base, resolve the sweep against the model
    and the modules the adapter trained, then score every ablation (:func:`score_sweep`;
    ``out_runs``: the folder of TREC runs, by default ``runs/`` beside ``out_scores``)."""
    from lorascope.core import adapters
    from lorascope.core.ablation import resolve_sweep
    from lorascope.core.lora_factors import adapter_rank
    from lorascope.core.roles import roles_for
    from lorascope.models.base import read_manifest

    adapters.verify(adapter_dir, base_dir)
    base = read_manifest(base_dir) or {}
    arch = roles_for(base["model_type"])
    ablations = resolve_sweep(
        params["sweep"],
        params["sweep_spec"],
        num_layers=base["num_layers"],
        arch_roles=arch,
        trained=trained_modules(adapter_dir, arch),
        rank=adapter_rank(adapter_dir),
    )
    resolved = {**params, "ablations": [a.to_params() for a in ablations]}
    score_sweep(resolved, base_dir, adapter_dir, split_dir, out_scores, out_metrics, out_summary,
                out_runs=out_runs)


def trained_modules(adapter_dir: str | Path, arch) -> set[tuple[int, str]]:
    """The (layer, role) modules an adapter has LoRA weights for, from the tensor names of
    its safetensors file (whatever its ``target_modules`` say: full names, or the short
    suffixes plain peft users write)."""
    from lorascope.core.foreign import adapter_module_ranks

    return set(adapter_module_ranks(Path(adapter_dir) / "adapter_model.safetensors", arch))


def score_sweep(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dir: str | Path,
    split_dir: str | Path,
    out_scores: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
    *,
    out_runs: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every ablation of a sweep on a split and write scores, metrics, summary and one
    TREC run per ablation (into ``out_runs``, by default ``runs/`` beside ``out_scores``;
    written once the sweep and its reproduction check passed).

    Returns:
        The summary written to ``out_summary``.

    Raises:
        SwitchingError: an ablation zeroes a module the adapter has no LoRA on.
        ReproductionError: ``full`` re-scored after the sweep differs from its first scores.
    """
    from lorascope.core import switching
    from lorascope.core.scoring import PreparedPairs
    from lorascope.models.adapted import load_adapted
    from lorascope.models.reranker import default_device

    settings = EvalSettings.from_params(params)
    tag = trec.sweep_tagger(params)
    runs_dir = Path(out_scores).with_name(trec.RUNS_DIR) if out_runs is None else Path(out_runs)

    device = default_device()
    precision = settings.scoring.resolve(device)
    started = time.perf_counter()
    model, tokenizer, arch = load_adapted(base_dir, adapter_dir, dtype=precision.dtype,
                                          device=device, attention=precision.attention)
    available = switching.lora_modules(model, arch)
    for ablation in settings.ablations:
        switching.check_present(available.keys(), ablation.zeroed,
                                f"adapter {adapter_dir} (ablation {ablation.name!r})")
    manifest = verified_manifest(adapter_dir, base_dir)
    log.info("loaded %s + %s on %s in %s in %.1fs: %d LoRA modules, %d ablations", base_dir,
             adapter_dir, device, precision.resolved, time.perf_counter() - started,
             len(available), len(settings.ablations))

    queries, candidates, qrels = read_split(split_dir)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    record = provenance.record(STAGE, params, base_dir=str(base_dir),
                               adapter_dir=str(adapter_dir), split_dir=str(split_dir),
                               device=device, adapter_manifest=manifest,
                               precision=describe(precision))

    runs: dict[str, dict[tuple[str, str], float]] = {}
    timing: dict[str, dict[str, Any]] = {}
    cache = _block_cache(model, arch, prepared, settings.ablations)
    with ParquetSink(out_scores, SCORES, record) as sink:
        for ablation in settings.ablations:
            t0 = time.perf_counter()
            with ExitStack() as stack:
                resumed = _resume(stack, cache, ablation, prepared)
                energy = stack.enter_context(_applied(model, arch, ablation, available))
                scores = prepared.score(model, device=device, progress=progress,
                                        desc=ablation.name)
            if cache is not None and cache.plan_version != prepared.plan_version:
                cache.drop()  # re-planned after an out-of-memory error: other batches
            seconds = time.perf_counter() - t0
            run_stats = prepared.last_stats
            assert run_stats is not None
            runs[ablation.name] = scores
            timing[ablation.name] = {**run_stats.to_dict(), "seconds": round(seconds, 4),
                                     "plan_version": prepared.plan_version,
                                     "energy_kept": _mean(energy.values()) if energy else None,
                                     "resumed_at_block": resumed}
            log.info("%-24s %d pairs in %.2fs (%.1f pairs/s, padded/real %.3f%s)",
                     ablation.name, len(scores), seconds, len(scores) / max(seconds, 1e-9),
                     run_stats.padding_ratio,
                     f", resumed at block {resumed}" if resumed else "")
            sink.write_rows(score_rows(ablation.name, scores))
        if len(settings.ablations) > 1:  # nothing was switched when `full` is all there is
            _check_reproduction(prepared, model, device, runs[FULL], timing[FULL]["plan_version"])
    trec.write_runs(runs_dir, runs, tag)

    per_query = write_metrics(out_metrics, runs, qrels, settings.measures, record)

    summary = sweep_summary(params, settings, per_query, timing, prepared, record, precision)
    summary["seconds_total"] = round(time.perf_counter() - started, 2)
    fileio.write_json(out_summary, summary)
    return summary


@contextmanager
def _applied(model: Any, arch: ArchitectureRoles, ablation: Ablation,
             available: Mapping[tuple[int, str], Any]) -> Iterator[Mapping[tuple[int, str], float]]:
    """The ablation in force inside the block: its modules zeroed and, with a
    ``truncate_rank``, every other LoRA module truncated; yields the energy kept per truncated
    module (empty without truncation)."""
    from lorascope.core import switching

    with ExitStack() as stack:
        stack.enter_context(switching.zeroed(model, arch, ablation.zeroed))
        energy: Mapping[tuple[int, str], float] = {}
        if ablation.truncate_rank is not None:
            rest = set(available) - set(ablation.zeroed)
            energy = stack.enter_context(
                switching.truncated(model, arch, rest, ablation.truncate_rank))
        yield energy


def _block_cache(model: Any, arch: ArchitectureRoles, prepared: Any,
                 ablations: Sequence[Ablation]) -> BlockCache | None:
    """A cache of the full pass's block outputs, when some ablation can resume from it and
    it fits :data:`~lorascope.core.prefix.DEFAULT_BUDGET`."""
    if not any(_first_block(a) for a in ablations):
        return None
    num_blocks = len(blocks(model, arch))
    element = next(model.parameters()).element_size()
    needed = cache_bytes(prepared.padded_tokens, model.config.hidden_size, num_blocks, element)
    if needed > DEFAULT_BUDGET:
        log.info("no block cache: it would take %.1f GiB", needed / 1024**3)
        return None
    return BlockCache(model, arch)


def _first_block(ablation: Ablation) -> int | None:
    """The block an ablation's pass can resume at: its shallowest zeroed module's layer
    (None: from the start - nothing zeroed, or an SVD truncation that touches every layer)."""
    if not ablation.zeroed or ablation.truncate_rank is not None:
        return None
    return min(layer for layer, _ in ablation.zeroed) or None


def _resume(stack: ExitStack, cache: BlockCache | None, ablation: Ablation,
            prepared: Any) -> int | None:
    """Enter the cache's recording (the ``full`` pass) or resuming (an ablation) context;
    returns the block the pass resumes at, if any. A pass whose batches are re-planned midway
    (out of GPU memory) stops replaying there and computes every block."""
    if cache is None:
        return None
    plan_version = prepared.plan_version
    if ablation.name == FULL:
        stack.enter_context(cache.recording(plan_version))
        return None
    first = _first_block(ablation)
    if first is None or not cache.recorded or cache.plan_version != plan_version:
        return None
    stack.enter_context(cache.resuming(first, lambda: prepared.plan_version == plan_version))
    return first


def _mean(values: Any) -> float:
    values = list(values)
    return round(sum(values) / len(values), 6)


def _check_reproduction(prepared: Any, model: Any, device: str,
                        first: Mapping[tuple[str, str], float], plan_version: int) -> None:
    """Re-score ``full`` on the plan's first batches (>= REPRODUCTION_PAIRS pairs) and compare
    (:func:`lorascope.core.reproduction.rescore_first`: bitwise while the plan is the one of
    the first pass, within 1e-3 after an out-of-memory re-plan)."""
    checked = rescore_first(prepared, model, device, first, plan_version, desc="full again",
                            min_pairs=REPRODUCTION_PAIRS)
    again, differ = checked.again, checked.differ
    if differ:
        k = differ[0]
        raise ReproductionError(
            f"re-scoring '{FULL}' after the sweep changed {len(differ)} of the {len(again)} "
            f"scores checked (e.g. {k}: {first[k]!r} -> {again[k]!r}); switching did not "
            "restore the adapter"
        )
    log.info("full adapter reproduced its scores %s after the sweep on %d of %d pairs "
             "(the plan's first %d batches)", checked.how, len(again), len(first),
             checked.batches)
