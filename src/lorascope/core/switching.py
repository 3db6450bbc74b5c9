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

:func:`truncated` is the other in-place transform: it replaces the LoRA factors of chosen
modules by those of their best rank-k approximation (:func:`lorascope.core.lora_factors.truncate_factors`,
same shapes, zero-padded, scaling unchanged) and copies the saved factors back on exit, so the
adapter is restored bitwise - post-hoc SVD rank compression evaluated without an export.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lorascope.core.roles import ArchitectureRoles, parse_module_name

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


@contextmanager
def truncated(
    model: torch.nn.Module, arch: ArchitectureRoles, modules: Collection[Module], rank: int
) -> Iterator[Mapping[Module, float]]:
    """Replace the LoRA update of ``modules`` by its best rank-``rank`` approximation inside
    the ``with`` block.

    For every active adapter of each selected layer, ``lora_A`` and ``lora_B`` are overwritten
    in place with the zero-padded rank-k factors of :func:`lorascope.core.lora_factors.truncate_factors`
    (the layer's scaling is left alone: ``s·B_k·A_k`` is the truncation of ``s·B·A``). A module
    of rank <= ``rank`` gets its factorisation rebuilt (equal up to rounding). DoRA keeps its
    trained magnitude vector (see :mod:`lorascope.core.lora_factors`). On exit (also on an exception)
    the saved factors are copied back: the weights are restored bitwise.

    Yields:
        The energy kept (``Σ kept σ² / Σ σ²``) per ``(layer, role)``; with several active
        adapters on a layer, the smallest.

    Raises:
        SwitchingError: a bad rank, a module without a LoRA layer, or a merged selected layer.
    """
    import torch

    from lorascope.core.lora_factors import truncate_factors

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise SwitchingError(f"truncation rank must be a positive int, got {rank!r}")
    table = lora_modules(model, arch)
    check_present(table.keys(), modules)
    keys = sorted(set(modules))
    merged = [key for key in keys if table[key].merged]
    if merged:
        raise SwitchingError(
            f"LoRA layers {merged[:4]} are merged into the base weights; truncation needs an "
            "unmerged adapter"
        )
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, its original value)
    energy: dict[Module, float] = {}
    try:
        with torch.no_grad():
            for key in keys:
                layer = table[key]
                for name in _active(layer):
                    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                    saved += [(a, a.detach().clone()), (b, b.detach().clone())]
                    a_k, b_k, kept = truncate_factors(a, b, rank)
                    a.copy_(a_k)
                    b.copy_(b_k)
                    energy[key] = min(kept, energy.get(key, 1.0))
                clear_dora_cache(layer)
        yield energy
    finally:
        with torch.no_grad():
            for param, original in reversed(saved):
                param.copy_(original)
        for key in keys:
            clear_dora_cache(table[key])


def _active(layer: LoraLayer) -> list[str]:
    """The layer's active adapters that carry LoRA factors."""
    return [name for name in layer.active_adapters if name in layer.lora_A]


def clear_dora_cache(module: torch.nn.Module) -> None:
    """Drop DoRA's cached weight norms in ``module`` and below (a LoRA layer or a whole model;
    the cache is only filled when peft's DoRA caching is switched on)."""
    for sub in module.modules():
        clear = getattr(sub, "_cache_clear", None)
        if callable(clear):
            clear()
