"""A reranker with an adapter on it: the base model and the adapter's LoRA layers and trained
head, loaded once, ready for scoring (and for switching modules off in place)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lorascope.core.roles import ArchitectureRoles


def load_adapted(
    base_dir: str | Path,
    adapter_dir: str | Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attention: str | None = None,
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
    base, tokenizer, arch = load_reranker(base_dir, dtype=dtype, device=device,
                                          attention=attention)
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


def swap_checkpoint(model: torch.nn.Module, adapter_dir: str | Path, device: str) -> None:
    """Load another checkpoint of the same run into the model's LoRA layers and head, in place
    (faster than loading it afresh; scores are bitwise those of a fresh load).

    Raises:
        ValueError: the checkpoint's tensors are not exactly the loaded adapter's.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from lorascope.core.switching import clear_dora_cache

    weights = load_peft_weights(str(adapter_dir), device=device)
    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        extra, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
        raise ValueError(f"{adapter_dir} holds other tensors than the loaded checkpoint "
                         f"(extra {extra[:3]}, missing {missing[:3]})")
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: peft did not place {result.unexpected_keys[:3]}")
    clear_dora_cache(model)
    model.eval()
