"""LoRA update anatomy: how large, how spread and how low-rank each module's update is.

For every LoRA module of an extracted adapter (read from its safetensors file; no model is
loaded), per ``(layer, role)``, the update ``ΔW = s·B·A`` (``s = lora_alpha / r``, or
``lora_alpha / √r`` with rsLoRA) is described by its singular values ``σ_1 >= ... >= σ_r``,
obtained from the r×r factorisation (QR of ``B`` and ``Aᵀ``, SVD of ``R_B·R_Aᵀ``;
:func:`lorascope.core.lora_factors.lora_svd`) - a d_out×d_in matrix is never formed:

* ``fro`` = ``‖ΔW‖_F = √Σσ_i²``;
* ``spectral`` = ``‖ΔW‖_2 = σ_1``;
* ``effective_rank`` = ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j`` and
  ``H(p) = -Σ p_i ln p_i`` (``0·ln 0 = 0``) - the effective rank of Roy & Vetterli (2007):
  1 for a rank-one update, r when all r singular values are equal; 0 for a zero update;
* ``stable_rank`` = ``‖ΔW‖_F² / ‖ΔW‖_2²`` (between 1 and the rank; 0 for a zero update);
* ``sigma``: the singular values themselves (length r, zero-padded when r > min(d_in, d_out));
* ``params``: the module's adapter parameters, ``r·(d_in + d_out)`` (+ ``d_out`` for DoRA's
  magnitude vector).

Fused roles are one LoRA module and one row: GPT-NeoX's ``qkv`` (``query_key_value``) is
reported whole. BERT's roles come from :mod:`lorascope.core.roles` like every other architecture's.

**DoRA**: the rows describe the ``B·A`` part. DoRA's full update
``m ⊙ (W + ΔW)/‖W + ΔW‖_row - W`` is full-rank in general and needs the base weight, so it is
not decomposed; instead ``magnitude_norm = ‖m‖₂`` is always reported, and with the base model
given (``base_dir``) ``magnitude_shift = ‖m - ‖W‖_row‖₂ / ‖‖W‖_row‖₂``, the relative change of
the magnitudes from their initial value (DoRA starts from ``m = ‖W‖_row``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core import roles

if TYPE_CHECKING:
    import torch

    from lorascope.core.lora_factors import LoraFactors

log = logging.getLogger(__name__)

Module = tuple[int, str]
QUANTITIES = ("fro", "spectral", "effective_rank", "stable_rank")


class AnatomyError(ValueError):
    """An adapter or summary that cannot be analysed; the message names the file."""


@dataclass(frozen=True)
class ModuleAnatomy:
    """One LoRA module's update ``ΔW = s·B·A`` described (see the module docstring)."""

    layer: int
    role: str
    module: str
    rank: int
    d_in: int
    d_out: int
    scaling: float
    params: int
    fro: float
    spectral: float
    effective_rank: float
    stable_rank: float
    sigma: tuple[float, ...]
    magnitude_norm: float | None = None
    magnitude_shift: float | None = None


# --------------------------------------------------------------------------- maths


def effective_rank(sigma: Iterable[float]) -> float:
    """Roy & Vetterli's effective rank ``exp(-Σ p_i ln p_i)``, ``p_i = σ_i / Σ σ``; 0 when
    every singular value is 0."""
    values = [float(s) for s in sigma if s > 0]
    total = sum(values)
    if total == 0.0:
        return 0.0
    entropy = -sum((s / total) * math.log(s / total) for s in values)
    return math.exp(entropy)


def module_anatomy(
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    layer: int = -1,
    role: str = "",
    module: str = "",
    magnitude: torch.Tensor | None = None,
    base_row_norm: torch.Tensor | None = None,
) -> ModuleAnatomy:
    """The anatomy of ``ΔW = scaling·B·A`` from its factors (``A`` r×d_in, ``B`` d_out×r).

    ``magnitude`` (DoRA's m) adds ``magnitude_norm`` and, with ``base_row_norm`` (``‖W‖`` per
    output row), ``magnitude_shift``.
    """
    from lorascope.core.lora_factors import lora_svd

    svd = lora_svd(lora_a, lora_b)
    r = int(lora_a.shape[0])
    sigma = [abs(scaling) * float(s) for s in svd.sigma]
    sigma += [0.0] * (r - len(sigma))
    fro = math.sqrt(sum(s * s for s in sigma))
    spectral = sigma[0] if sigma else 0.0
    params = lora_a.numel() + lora_b.numel()
    magnitude_norm = magnitude_shift = None
    if magnitude is not None:
        m = magnitude.detach().to("cpu").double().flatten()
        params += m.numel()
        magnitude_norm = float(m.norm())
        if base_row_norm is not None:
            w = base_row_norm.detach().to("cpu").double().flatten()
            if w.shape != m.shape:
                raise AnatomyError(f"{module}: magnitude vector has {m.numel()} entries but "
                                   f"the base weight has {w.numel()} rows")
            magnitude_shift = float((m - w).norm() / w.norm()) if float(w.norm()) else None
    return ModuleAnatomy(
        layer=layer, role=role, module=module, rank=r, d_in=int(lora_a.shape[1]),
        d_out=int(lora_b.shape[0]), scaling=float(scaling), params=int(params), fro=fro,
        spectral=spectral, effective_rank=effective_rank(sigma),
        stable_rank=(fro * fro) / (spectral * spectral) if spectral > 0 else 0.0,
        sigma=tuple(sigma), magnitude_norm=magnitude_norm, magnitude_shift=magnitude_shift,
    )


# --------------------------------------------------------------------------- adapters


def _architecture(adapter_dir: Path, names: Iterable[str],
                  model_type: str | None) -> roles.ArchitectureRoles:
    """The role mapping: the given model type, else the adapter manifest's, else the first
    supported architecture that names every LoRA module."""
    from lorascope.core import adapters

    if model_type is None and (adapter_dir / adapters.MANIFEST).is_file():
        model_type = (adapters.read_manifest(adapter_dir).get("base_model") or {}).get(
            "model_type")
    if model_type is not None:
        return roles.roles_for(model_type)
    names = list(names)
    for candidate in roles.supported_architectures():
        arch = roles.roles_for(candidate)
        if all(roles.parse_module_name(arch, n) is not None for n in names):
            return arch
    raise AnatomyError(f"{adapter_dir}: its LoRA modules (e.g. {names[:2]}) match no supported "
                       f"architecture ({', '.join(roles.supported_architectures())})")


def _base_row_norms(base_dir: Path, arch: roles.ArchitectureRoles,
                    wanted: Iterable[Module]) -> dict[Module, torch.Tensor]:
    """``‖W‖`` per output row of the base weights of ``wanted`` modules, read tensor by tensor
    from the base model's safetensors (sharded or not)."""
    from safetensors import safe_open

    wanted = set(wanted)
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    prefix = arch.layer_prefix.split(".")[0]
    norms: dict[Module, torch.Tensor] = {}
    for file in files:
        path = base_dir / file
        if not path.is_file():
            raise AnatomyError(f"{path}: no such base weights file")
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if not key.endswith(".weight"):
                    continue
                name = key.removesuffix(".weight")
                found = (roles.parse_module_name(arch, name)
                         or roles.parse_module_name(arch, f"{prefix}.{name}"))
                if found in wanted:
                    norms[found] = handle.get_tensor(key).double().norm(dim=1)
    missing = sorted(wanted - set(norms))
    if missing:
        raise AnatomyError(f"{base_dir}: no base weights for {missing[:4]} (needed for DoRA's "
                           "magnitude shift)")
    return norms


def adapter_anatomy(
    adapter_dir: str | Path, *, model_type: str | None = None, base_dir: str | Path | None = None
) -> list[ModuleAnatomy]:
    """Every LoRA module of a saved adapter, sorted by layer then the architecture's role
    order.

    Args:
        adapter_dir: an extracted adapter (or any saved peft LoRA adapter).
        model_type: the architecture; default: the adapter manifest's, else inferred from the
            module names.
        base_dir: the base model directory; only read for DoRA adapters, to report the
            magnitude shift.

    Raises:
        AnatomyError: naming the adapter, when a LoRA module is no role of the architecture.
    """
    from lorascope.core.lora_factors import read_adapter

    path = Path(adapter_dir)
    saved = read_adapter(path)
    arch = _architecture(path, (m.name for m in saved.modules), model_type)
    keyed: dict[Module, LoraFactors] = {}
    for module in saved.modules:
        key = roles.parse_module_name(arch, module.name)
        if key is None:
            raise AnatomyError(f"{path}: LoRA module {module.name} is no role of "
                               f"architecture {arch.model_type!r}")
        keyed[key] = module
    row_norms: dict[Module, Any] = {}
    dora = [k for k, m in keyed.items() if m.magnitude is not None]
    if dora and base_dir is not None:
        row_norms = _base_row_norms(Path(base_dir), arch, dora)
    order = {role: i for i, role in enumerate(arch.roles)}
    out = []
    for key in sorted(keyed, key=lambda k: (k[0], order[k[1]])):
        m = keyed[key]
        out.append(module_anatomy(m.lora_a, m.lora_b, m.scaling, layer=key[0], role=key[1],
                                  module=m.name, magnitude=m.magnitude,
                                  base_row_norm=row_norms.get(key)))
    return out
