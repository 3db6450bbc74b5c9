"""Scoring one model with every attention head ablated in turn, in place.

:func:`score_heads` scores the unablated model once (the *clean* pass) and then every chosen
head ablated alone (:func:`lorascope.core.heads.ablated_heads`: a pre-hook on the output
projection edits that head's slice of its input; nothing is written to the weights, so the
model is restored bitwise when the context exits - checked by re-scoring the first batches).

Speed: ablating a head of block ``l`` leaves blocks ``0..l-1`` unchanged, so the clean pass
records every block's output (:class:`lorascope.core.prefix.BlockCache`) and each ablation of
block ``l`` resumes there (:meth:`~lorascope.core.prefix.BlockCache.resuming`): the scores are
bitwise those of a full pass, at about ``(L - l) / L`` of its block compute (on average a
little over half for a sweep of every head). The cache is used while the batch plan is the
recorded one and only when it fits :data:`lorascope.core.prefix.DEFAULT_BUDGET`.

Mean ablation: the mean output of each head over every real (unpadded) token of the pairs
scored, per scored model, accumulated during the clean pass in float64
(:class:`lorascope.core.heads.HeadMeans`: nothing but a running sum per layer is held, so it
scales to a 7B model's split).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorascope.core.heads import Head, HeadMeans, Mode, ablated_heads, head_layout
from lorascope.core.prefix import DEFAULT_BUDGET, BlockCache, blocks, cache_bytes
from lorascope.core.reproduction import PAIRS, rescore_first

if TYPE_CHECKING:
    import torch

    from lorascope.core.roles import ArchitectureRoles
    from lorascope.core.scoring import PreparedPairs

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: The restoration check re-scores the plan's first batches up to at least this many pairs.
RESTORATION_PAIRS = PAIRS
#: How often the clean pass is redone when an out-of-memory re-plan changed its batches.
CLEAN_ATTEMPTS = 3


class RestorationError(RuntimeError):
    """Re-scoring the unablated model after the ablations did not reproduce its scores."""


@dataclass
class HeadScores:
    """One scored model: the clean scores, the scores with each head ablated, and how."""

    clean: dict[Key, float]
    ablated: dict[Head, dict[Key, float]]
    resumed_at: dict[Head, int | None]
    clean_seconds: float
    ablation_seconds: float
    cache_bytes: int | None
    means: dict[int, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def block_cache(model: torch.nn.Module, arch: ArchitectureRoles, prepared: PreparedPairs,
                budget: int = DEFAULT_BUDGET) -> tuple[BlockCache | None, int]:
    """A block cache when every block's output of the split fits ``budget`` bytes (None
    otherwise), and the bytes it takes."""
    element = next(model.parameters()).element_size()
    needed = cache_bytes(prepared.padded_tokens, int(model.config.hidden_size),
                         len(blocks(model, arch)), element)
    if needed > budget:
        log.info("no block cache: it would take %.2f GiB (budget %.2f GiB)", needed / 1024**3,
                 budget / 1024**3)
        return None, needed
    return BlockCache(model, arch), needed


def score_heads(
    prepared: PreparedPairs,
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    *,
    mode: Mode = "zero",
    heads: Sequence[Head] | None = None,
    device: str = "cpu",
    resume: bool = True,
    cache_budget: int = DEFAULT_BUDGET,
    progress: bool = True,
    desc: str = "heads",
) -> HeadScores:
    """Score ``model`` clean, then with each of ``heads`` (default: every head, layer-major)
    ablated alone; ``resume``: replay the clean pass's blocks below each ablated head.

    Raises:
        RestorationError: the model re-scored after the loop differs from its clean scores.
    """
    from tqdm.auto import tqdm

    layout = head_layout(model, arch)
    chosen = layout.all_heads() if heads is None else layout.check(heads)
    cache, needed = block_cache(model, arch, prepared, cache_budget) if resume else (None, None)

    t0 = time.perf_counter()
    means = None
    for attempt in range(1, CLEAN_ATTEMPTS + 1):
        version = prepared.plan_version
        accumulator = HeadMeans()
        with ExitStack() as stack:
            if cache is not None:
                stack.enter_context(cache.recording(version))
            if mode == "mean":
                stack.enter_context(accumulator.recording(model, arch))
            clean = prepared.score(model, device=device, progress=False, desc=f"{desc} clean")
        if prepared.plan_version == version:
            break
        log.warning("the batches were re-planned during the clean pass (out of memory); "
                    "scoring it again (attempt %d)", attempt + 1)
        if cache is not None:
            cache.drop()
    else:
        raise RuntimeError(f"{desc}: the batch plan kept changing during the clean pass")
    clean_plan = prepared.plan_version
    if mode == "mean":
        means = accumulator.means()
    clean_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    ablated: dict[Head, dict[Key, float]] = {}
    resumed_at: dict[Head, int | None] = {}
    bar = tqdm(total=len(chosen), desc=desc, unit="head", disable=not progress)
    try:
        for layer, head in chosen:
            with ExitStack() as stack:
                resumed = None
                if (cache is not None and cache.recorded and layer > 0
                        and cache.plan_version == prepared.plan_version):
                    version = prepared.plan_version
                    stack.enter_context(
                        cache.resuming(layer, lambda v=version: prepared.plan_version == v))
                    resumed = layer
                stack.enter_context(ablated_heads(model, arch, [(layer, head)], mode=mode,
                                                  means=means))
                ablated[(layer, head)] = prepared.score(model, device=device, progress=False,
                                                        desc=f"{desc} L{layer}H{head}")
            if cache is not None and cache.recorded and cache.plan_version != prepared.plan_version:
                cache.drop()  # re-planned after an out-of-memory error: other batches
            resumed_at[(layer, head)] = resumed
            bar.update(1)
    finally:
        bar.close()
        if cache is not None:
            cache.drop()
    ablation_seconds = time.perf_counter() - t1
    check_restored(prepared, model, device, clean, clean_plan, desc)
    return HeadScores(clean=clean, ablated=ablated, resumed_at=resumed_at,
                      clean_seconds=clean_seconds, ablation_seconds=ablation_seconds,
                      cache_bytes=needed if cache is not None else None, means=means,
                      stats=prepared.last_stats.to_dict() if prepared.last_stats else {})


def check_restored(prepared: PreparedPairs, model: torch.nn.Module, device: str,
                   clean: dict[Key, float], clean_plan: int, desc: str) -> None:
    """Re-score the unablated model on the plan's first batches (at least
    :data:`RESTORATION_PAIRS` pairs, :func:`lorascope.core.reproduction.rescore_first`):
    bitwise equal to the clean pass while the plan is the same, within 1e-3 after an
    out-of-memory re-plan (other batch shapes)."""
    checked = rescore_first(prepared, model, device, clean, clean_plan, desc=f"{desc} again",
                            min_pairs=RESTORATION_PAIRS)
    again, differ = checked.again, checked.differ
    if differ:
        k = differ[0]
        raise RestorationError(
            f"{desc}: re-scoring the unablated model after the head ablations changed "
            f"{len(differ)} of {len(again)} scores (e.g. {k}: {clean[k]!r} -> {again[k]!r})")
    log.info("%s: unablated scores reproduced %s on %d of %d pairs after the ablations", desc,
             checked.how, len(again), len(clean))
