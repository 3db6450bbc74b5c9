"""Activation patching: activations of the perturbed run copied into the baseline run.

Per batch (baseline and perturbed pairs have equal lengths, so their length-sorted batch plans
are the same - checked): the baseline pass is scored while a
:class:`~lorascope.core.prefix.BlockCache` records every block's output; the perturbed pass is
scored while its block outputs (and, for head patching, every layer's attention output
projection input, :func:`lorascope.core.heads.recorded_head_outputs`) are kept. Then:

* residual stream, block ``l``, token group ``g``: blocks ``0..l`` replay the baseline's
  recorded outputs (``resuming(l + 1)``); a forward hook on block ``l`` (hooks fire on
  replayed blocks) replaces the output at the group's positions with the perturbed run's;
  blocks ``l+1..`` and the head compute. Patching no position reproduces the baseline
  bitwise; patching every position reproduces the perturbed scores up to float rounding.
* head ``h`` of block ``l``: blocks ``0..l-1`` replay; in block ``l`` the ``o`` module's input
  columns of head ``h`` (:func:`lorascope.core.heads.edited_heads`) are the perturbed run's at
  every position.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorascope.core.roles import ArchitectureRoles

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lorascope.core.scoring import PreparedPairs

log = logging.getLogger(__name__)


@dataclass
class PatchScores:
    """Scores of one perturbation under one model, in the pairs' order.

    Attributes:
        baseline, perturbed: ``(pairs,)``.
        residual: ``(layers, groups, pairs)``: block ``l``'s output patched at group ``g``.
        heads: ``(layers, heads, pairs)`` or ``None`` (no head patching asked).
        groups: the group names of ``residual``'s second axis.
        seconds: wall time per part (``baseline``, ``perturbed``, ``residual``, ``heads``).
    """

    baseline: np.ndarray
    perturbed: np.ndarray
    residual: np.ndarray
    heads: np.ndarray | None
    groups: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        return self.perturbed - self.baseline


def share(patched: np.ndarray, baseline: np.ndarray, perturbed: np.ndarray) -> float:
    """sum(patched - baseline) / sum(perturbed - baseline) over the pairs (NaN when the
    perturbation changed nothing in sum)."""
    import numpy as np

    total = float(np.sum(perturbed - baseline))
    if total == 0.0 or not len(baseline):
        return float("nan")
    return float(np.sum(patched - baseline)) / total


def rank_heads(cells: Iterable[tuple[float, int, int]], count: int
               ) -> list[tuple[int, int, float]]:
    """The ``count`` ``(layer, head, share)`` of the largest single-head shares among
    ``cells`` ``(share, layer, head)`` (NaN dropped; ties: shallower layer, lower head).

    Each share is that of one head patched alone: the shares of several heads were never
    patched together and do not add up to a joint patch's. Light (no torch): the stage's
    summary and the report both rank with it."""
    kept = [(float(v), int(layer), int(head)) for v, layer, head in cells
            if not math.isnan(float(v))]
    kept.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(layer, head, value) for value, layer, head in kept[:count]]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def check_same_plan(baseline: PreparedPairs, perturbed: PreparedPairs) -> None:
    """Raise unless both prepared sets have the same keys, lengths and batch plan."""
    if (baseline.keys != perturbed.keys or baseline.lengths != perturbed.lengths
            or baseline.batches != perturbed.batches):
        raise ValueError("baseline and perturbed pairs differ in keys, lengths or batch plan: "
                         "positions would not align")


def _masks(groups: Sequence[Mapping[str, Sequence[int]]], names: Sequence[str],
           batch: Sequence[int], width: int) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for name in names:
        mask = torch.zeros((len(batch), width, 1), dtype=torch.bool)
        for row, i in enumerate(batch):
            positions = list(groups[i].get(name, ()))
            if positions:
                mask[row, positions, 0] = True
        out[name] = mask
    return out


def patch_scores(
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    baseline: PreparedPairs,
    perturbed: PreparedPairs,
    groups: Sequence[Mapping[str, Sequence[int]]],
    group_names: Sequence[str],
    *,
    heads: bool,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "patching",
) -> PatchScores:
    """Every residual-stream patch (block x group) and, with ``heads``, every head patch of
    the perturbed run into the baseline run, batch by batch."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from lorascope.core import heads as head_units
    from lorascope.core.prefix import BlockCache, blocks

    check_same_plan(baseline, perturbed)
    if len(groups) != len(baseline):
        raise ValueError(f"{len(groups)} group maps for {len(baseline)} pairs")
    layer_modules = blocks(model, arch)
    depth = len(layer_modules)
    layout = head_units.head_layout(model, arch) if heads else None
    n = len(baseline)
    out_base = np.full(n, np.nan)
    out_pert = np.full(n, np.nan)
    residual = np.full((depth, len(group_names), n), np.nan)
    head_scores = np.full((depth, layout.heads, n), np.nan) if layout else None
    seconds = {"baseline": 0.0, "perturbed": 0.0, "residual": 0.0, "heads": 0.0}
    cache = BlockCache(model, arch)
    plan = baseline.batches
    passes = 2 + depth * len(group_names) + (depth * layout.heads if layout else 0)
    bar = tqdm(total=len(plan) * passes, desc=desc, unit="pass", disable=not progress)

    def score(prepared: PreparedPairs, batch: Sequence[int]) -> np.ndarray:
        values = prepared.score(model, device=device, progress=False, batches=[batch])
        bar.update(1)
        return np.array([values[prepared.keys[i]] for i in batch])

    try:
        for batch in plan:
            width = max(baseline.lengths[i] for i in batch)
            masks = _masks(groups, group_names, batch, width)
            t0 = time.perf_counter()
            with cache.recording(baseline.plan_version):
                out_base[batch] = score(baseline, batch)
            t1 = time.perf_counter()
            kept: list[Any] = [None] * depth

            def keep(index: int, _kept: list[Any] = kept) -> Any:
                def hook(module: Any, args: Any, output: Any) -> None:
                    _kept[index] = _hidden(output).detach()

                return hook

            handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(layer_modules)]
            try:
                if layout is not None:
                    with head_units.recorded_head_outputs(model, arch) as o_inputs:
                        out_pert[batch] = score(perturbed, batch)
                else:
                    o_inputs = {}
                    out_pert[batch] = score(perturbed, batch)
            finally:
                for handle in handles:
                    handle.remove()
            t2 = time.perf_counter()
            for layer in range(depth):
                source = kept[layer]
                for g, name in enumerate(group_names):
                    mask = masks[name].to(source.device)

                    def patch(module: Any, args: Any, output: Any, _mask: Any = mask,
                              _source: Any = source) -> Any:
                        hidden = _hidden(output)
                        return _with_hidden(output, torch.where(_mask, _source, hidden))

                    handle = layer_modules[layer].register_forward_hook(patch)
                    try:
                        with cache.resuming(layer + 1):
                            residual[layer, g, batch] = score(baseline, batch)
                    finally:
                        handle.remove()
            t3 = time.perf_counter()
            if layout is not None and head_scores is not None:
                for layer in range(depth):
                    source = o_inputs[layer][0]
                    for head in range(layout.heads):
                        cols = layout.columns(head)

                        def edit(_layer: int, x: Any, _cols: slice = cols,
                                 _source: Any = source) -> Any:
                            x = x.clone()
                            x[..., _cols] = _source[..., _cols].to(x.device)
                            return x

                        with cache.resuming(layer), head_units.edited_heads(
                                model, arch, edit, [layer]):
                            head_scores[layer, head, batch] = score(baseline, batch)
            t4 = time.perf_counter()
            for part, s in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                seconds[part] += s
    finally:
        bar.close()
        cache.drop()
    return PatchScores(out_base, out_pert, residual, head_scores, tuple(group_names),
                       {k: round(v, 4) for k, v in seconds.items()})
