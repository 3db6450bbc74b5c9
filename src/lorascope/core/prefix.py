"""Resuming a scoring pass at a block: an ablation leaves the blocks below its first zeroed
layer as they are, so their outputs need not be computed again.

A sweep scores the full adapter first. :class:`BlockCache` records, during that pass, the
output of every transformer block for every batch. An ablation whose shallowest zeroed LoRA
module sits in block ``l`` then runs with blocks ``0..l-1`` replaced by a replay of their
recorded outputs (:meth:`BlockCache.resuming`): the embeddings, blocks ``l..L-1`` and the head
run as usual, through the model's own code, on the same tensors as a full pass would give
them, so the scores are bitwise those of a full pass (tested for LLaMA, GPT-NeoX and BERT).
For a sweep that drops one (layer, role) module at a time about half of the blocks are
skipped on average.

Only ablations that zero modules (no SVD truncation, which touches every layer) resume, and
only while the batch plan is the one recorded (an out-of-memory re-plan drops the cache). The
cache holds every block's output for the whole split: :func:`cache_bytes` estimates it, and
the caller records only when that fits its budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lorascope.core.roles import ArchitectureRoles

log = logging.getLogger(__name__)

#: The largest cache recorded by default (bytes).
DEFAULT_BUDGET = 2 * 1024**3


def blocks(model: torch.nn.Module, arch: ArchitectureRoles) -> list[torch.nn.Module]:
    """The transformer blocks of a reranker (a PeftModel or the task model), in depth order."""
    from lorascope.core.readout import task_model

    return list(task_model(model).get_submodule(arch.layer_prefix))


def cache_bytes(padded_tokens: int, hidden: int, num_blocks: int, element_size: int) -> int:
    """What recording every block's output of a pass costs: ``padded tokens x hidden x
    blocks`` values."""
    return padded_tokens * hidden * num_blocks * element_size


class BlockCache:
    """Every block's output of one scoring pass, per batch, to replay below an ablation."""

    def __init__(self, model: torch.nn.Module, arch: ArchitectureRoles) -> None:
        self._blocks = blocks(model, arch)
        self._outputs: list[list[Any]] = [[] for _ in self._blocks]
        self.plan_version: int | None = None

    @property
    def recorded(self) -> bool:
        return self.plan_version is not None

    @contextmanager
    def recording(self, plan_version: int) -> Iterator[None]:
        """Record every block's output of the passes inside the block (one per batch)."""
        self._outputs = [[] for _ in self._blocks]

        def keep(index: int):
            def hook(module: Any, args: Any, output: Any) -> None:
                self._outputs[index].append(output)

            return hook

        handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(self._blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self.plan_version = plan_version

    def drop(self) -> None:
        """Forget the recorded outputs (the batch plan changed)."""
        self._outputs = [[] for _ in self._blocks]
        self.plan_version = None

    @contextmanager
    def resuming(self, first: int, valid: Callable[[], bool] | None = None) -> Iterator[None]:
        """Inside the block, blocks ``0..first-1`` return their recorded outputs, batch by batch
        in the recorded order, instead of computing them.

        ``valid``: asked before each replay; once it says no (the batch plan changed under the
        pass, e.g. re-planned after an out-of-memory error), the blocks compute again for the
        rest of the pass - the recorded outputs belong to the old batches."""
        if not self.recorded:
            raise RuntimeError("nothing recorded to resume from")
        if not 0 <= first <= len(self._blocks):
            raise ValueError(f"first block {first} out of range 0..{len(self._blocks)}")
        replays = []
        stale = [False]  # once the plan changed, every block computes for the rest of the pass
        for index in range(first):
            outputs = iter(self._outputs[index])

            def replay(*args: Any, _outputs: Iterator[Any] = outputs, _index: int = index,
                       _compute: Callable[..., Any] = self._blocks[index].forward,
                       **kwargs: Any) -> Any:
                if stale[0] or (valid is not None and not valid()):
                    stale[0] = True
                    return _compute(*args, **kwargs)
                try:
                    return next(_outputs)
                except StopIteration:
                    raise RuntimeError(f"block {_index}: more batches than recorded") from None

            block = self._blocks[index]
            block.forward = replay  # the instance attribute shadows the class's forward
            replays.append(block)
        try:
            yield
        finally:
            for block in replays:
                del block.forward
