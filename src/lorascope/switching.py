"""Switch LoRA updates of chosen (layer, role) modules off and on, in place.

Evaluation loads the base model and the adapter once and scores every ablation of a sweep by
toggling LoRA layers, never reloading and never merging. The mechanism is peft's *per-layer*
``enable_adapters(False)``: the layer's forward then returns ``base_layer(x)`` exactly, i.e. the
base weight ``W`` instead of ``W + (alpha/r)·B·A``. Measured (tests/test_switching.py), it is
bitwise equal to a freshly loaded adapter whose selected ``lora_B`` are zero - for plain LoRA,
rsLoRA and DoRA (for DoRA the reference also resets the magnitude vector to the base weight's
column norms, i.e. the state DoRA starts from). The alternatives are wrong or partial:

* ``set_scale(adapter, 0)`` is exact for plain LoRA and rsLoRA, but for DoRA it leaves the
  learned magnitude rescaling ``m / ||W||`` in place: the output is not the base weight's.
* ``PeftModel.disable_adapter()`` switches off the trained score head too (a
  ``modules_to_save`` copy), so it measures "no fine-tuning", not "no LoRA updates".
* merging and unmerging changes the base weights in floating point and cannot switch a subset.

The trained head is never touched: "No LoRA updates" keeps the trained head, as in the paper.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lorascope.roles import ArchitectureRoles, parse_module_name

if TYPE_CHECKING:
    import torch
    from peft.tuners.lora import LoraLayer

log = logging.getLogger(__name__)

Module = tuple[int, str]


class SwitchingError(ValueError):
    """A LoRA module cannot be switched: absent from the adapter, or merged."""


def lora_modules(model: torch.nn.Module, arch: ArchitectureRoles) -> dict[Module, LoraLayer]:
    """The model's LoRA layers by ``(layer, role)``.

    LoRA layers on modules that are no role of the architecture (none are created by this
    package) are ignored with a debug message.
    """
    from peft.tuners.lora import LoraLayer

    found: dict[Module, LoraLayer] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = parse_module_name(arch, name)
        if key is None:
            log.debug("LoRA layer %s is no role of %s; not switchable", name, arch.model_type)
            continue
        if key in found:
            raise SwitchingError(f"two LoRA layers map to layer {key[0]} role {key[1]!r}")
        found[key] = module
    return found


def disabled_modules(model: torch.nn.Module, arch: ArchitectureRoles) -> frozenset[Module]:
    """The ``(layer, role)`` LoRA modules whose update is currently switched off."""
    return frozenset(k for k, m in lora_modules(model, arch).items() if m.disable_adapters)


def check_present(
    available: Collection[Module], modules: Collection[Module], what: str = "the adapter"
) -> None:
    """Raise :class:`SwitchingError` naming the modules of ``modules`` not in ``available``."""
    missing = sorted(set(modules) - set(available))
    if missing:
        shown = ", ".join(f"layer {layer} {role}" for layer, role in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        have_roles = sorted({r for _, r in available})
        have_layers = sorted({layer for layer, _ in available})
        have = (f"roles {', '.join(have_roles)} in layers {have_layers[0]}-{have_layers[-1]}"
                if available else "no LoRA modules")
        raise SwitchingError(f"{what} has no LoRA on {shown}{more}; it has {have}")


@contextmanager
def zeroed(
    model: torch.nn.Module, arch: ArchitectureRoles, modules: Collection[Module]
) -> Iterator[None]:
    """Zero the LoRA updates of exactly ``modules`` inside the ``with`` block.

    Each selected layer is disabled with peft's per-layer ``enable_adapters(False)``; on exit
    (also on an exception) every layer gets back its previous enabled state and the previous
    ``requires_grad`` flags of its parameters (``enable_adapters(True)`` would otherwise make
    adapter weights trainable). Nothing is copied, reloaded or merged.

    Raises:
        SwitchingError: a module has no LoRA layer, or a selected layer is merged.
    """
    table = lora_modules(model, arch)
    check_present(table.keys(), modules)
    layers = [table[key] for key in sorted(set(modules))]
    merged = [key for key in sorted(set(modules)) if table[key].merged]
    if merged:
        raise SwitchingError(
            f"LoRA layers {merged[:4]} are merged into the base weights; switching needs an "
            "unmerged adapter"
        )
    saved: list[tuple[LoraLayer, bool, object, dict[str, bool]]] = []
    try:
        for layer in layers:
            grads = {name: p.requires_grad for name, p in layer.named_parameters()}
            saved.append((layer, bool(layer.disable_adapters), layer.active_adapter, grads))
            layer.enable_adapters(False)
        yield
    finally:
        for layer, was_disabled, active, grads in reversed(saved):
            _restore(layer, was_disabled, active, grads)


def _restore(layer: LoraLayer, was_disabled: bool, active: object, grads: dict[str, bool]) -> None:
    """Give a layer back its enabled state, active adapter(s) and ``requires_grad`` flags."""
    layer.enable_adapters(not was_disabled)
    if layer.active_adapter != active:
        # enable_adapters(True) re-sets the active adapter as a list ("default" -> ["default"]);
        # same adapters, but put the exact previous value back so the state is unchanged.
        layer._active_adapter = active
    for name, param in layer.named_parameters():
        param.requires_grad_(grads[name])
