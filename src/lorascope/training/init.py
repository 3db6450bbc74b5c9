"""LoRA variant initialisations that need more than a ``LoraConfig`` field: EVA.

PiSSA and OLoRA are peft's own (``init_lora_weights``); the loop saves their untrained adapter
(:func:`lorascope.training.loop.initial_dir`) so that extraction can express a checkpoint as a
delta on the original base.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lorascope.core import roles
from lorascope.training.groups import Group, GroupOrder
from lorascope.training.settings import Runtime, TrainSettings

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)


def eva_config(settings: TrainSettings) -> dict[str, Any]:
    """``eva_config`` for EVA runs: ``rho = 1`` keeps rank r in every module (no
    redistribution), so that an EVA adapter's rank means what its name says."""
    if settings.init != "eva":
        return {}
    from peft import EvaConfig

    return {"eva_config": EvaConfig(rho=1.0)}


def initialize_eva(
    model: PeftModel,
    tokenizer: Any,
    arch: roles.ArchitectureRoles,
    settings: TrainSettings,
    runtime: Runtime,
    groups: Sequence[Group],
    order: GroupOrder,
) -> None:
    """EVA: A from the principal components of each target layer's inputs (non-pad tokens)
    over the groups of the run's first optimizer step, encoded as training encodes them; B
    stays zero, so the scores are unchanged.

    peft's ``initialize_lora_eva_weights(model, dataloader)`` cycles through the batches until
    every component's direction is stable between two batches; on small models the sign of a
    component can flip from batch to batch for good (seen on a 4-layer, width-128 LLaMA: a
    cosine of -1 after 40 batches), and the loop never ends. So the components are fitted
    here in one pass over this fixed set of batches, with peft's own incremental PCA and its
    EVA settings (randomised SVD with seed 42, r components per module, i.e. ``rho = 1``), and
    handed to ``initialize_lora_eva_weights(model, eva_state_dict=...)``, which loads them as
    peft does.
    Draws no random numbers from the run's stream (eval mode; the randomised SVD forks the
    RNG), so the RNG state after EVA is the one before it.
    """
    import torch
    from peft import initialize_lora_eva_weights
    from peft.tuners.lora import LoraLayer
    from peft.utils.incremental_pca import IncrementalPCA

    from lorascope.models.reranker import encode_pairs

    chosen = [groups[i] for i in order.take(0, settings.queries_per_step)]
    batches = []
    for start in range(0, len(chosen), settings.micro_batch_queries):
        chunk = chosen[start : start + settings.micro_batch_queries]
        batch = encode_pairs(
            tokenizer,
            arch,
            [g.query for g in chunk for _ in g.passages],
            [p for g in chunk for p in g.passages],
            settings.max_length,
        )
        batches.append({k: v.to(runtime.device) for k, v in batch.items()})

    rank = settings.rank
    fits: dict[str, Any] = {}
    tokens = {"mask": None}

    def fit_inputs(name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            x = args[0][tokens["mask"]].detach().float()  # (non-pad tokens, in_features)
            if x.shape[0] >= rank:  # as peft: a batch with fewer tokens than r is skipped
                fits[name].partial_fit(x)

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            fits[name] = IncrementalPCA(n_components=rank, copy=True, lowrank=True, lowrank_seed=42)
            handles.append(module.register_forward_hook(fit_inputs(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter(), runtime.autocast():
            for batch in batches:
                tokens["mask"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unfitted = sorted(n for n, f in fits.items() if not hasattr(f, "components_"))
    if unfitted:
        raise RuntimeError(
            f"EVA: fewer than r={rank} tokens in every batch for {unfitted[0]} (and "
            f"{len(unfitted) - 1} more modules)"
        )
    targets = model.peft_config["default"].target_modules
    components = {name: fit.components_[:rank] for name, fit in fits.items()}
    initialize_lora_eva_weights(model, eva_state_dict=components, show_progress_bar=False)
    config = model.peft_config["default"]
    if config.rank_pattern or config.alpha_pattern:
        raise RuntimeError(f"EVA changed ranks or alphas: {config.rank_pattern}")
    config.target_modules = targets  # EVA rewrites them as suffixes; keep the full names
    log.info("EVA initialised A of %d modules from %d batches", len(components), len(batches))
