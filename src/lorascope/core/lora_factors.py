"""LoRA-factor maths: the SVD of a LoRA update without forming it, its best rank-k
truncation, and saved peft adapters read as factors.

A LoRA module adds ``ΔW = s·B·A`` to a frozen weight ``W`` (``A``: r×d_in, ``B``: d_out×r,
``s = lora_alpha / r``, or ``lora_alpha / √r`` with rsLoRA). Its singular value decomposition
never needs the d_out×d_in matrix::

    B = Q_B·R_B,  Aᵀ = Q_A·R_A                (thin QR: Q with orthonormal columns, R ≤ r×r)
    B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ = Q_B·(U·Σ·Vᵀ)·Q_Aᵀ      (SVD of the small r×r core)
        = (Q_B·U)·Σ·(Q_A·V)ᵀ

so ``σ(ΔW) = |s|·Σ`` and the best rank-k approximation of ``ΔW`` (Eckart-Young, in Frobenius
and spectral norm) is ``s·B_k·A_k`` with ``B_k = Q_B·U_k·√Σ_k`` and ``A_k = √Σ_k·V_kᵀ·Q_Aᵀ``
(the singular values split evenly between the two factors). Everything is computed in float64
and cast back to the factors' dtype. The *energy kept* by a rank-k truncation is
``Σ_{i≤k} σ_i² / Σ_i σ_i²`` (``‖ΔW_k‖_F² / ‖ΔW‖_F²``).

Used by in-place truncation (:func:`lorascope.core.switching.truncated`, the sweep generator
``svd``), by the SVD-compressed exports (:mod:`lorascope.analyses.compression.stage`) and by the
update anatomy (:mod:`lorascope.analyses.anatomy.maths`).

**DoRA**: DoRA's output is ``m ⊙ (W + ΔW) / ‖W + ΔW‖_row``; only the ``B·A`` part is
truncated. The learned magnitude vector ``m`` is kept as trained (it is not re-fitted to the
truncated direction), in place and in the export alike; peft recomputes the row norm
``‖W + ΔW_k‖`` from the truncated factors at run time, so both give the same outputs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core.adapters import ADAPTER_FILES

if TYPE_CHECKING:
    import torch

WEIGHTS, CONFIG = ADAPTER_FILES
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")
_MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
_PEFT_PREFIX = "base_model.model."


class FactorError(ValueError):
    """LoRA factors or a saved adapter that cannot be read or truncated as asked; the message
    names the file or the value."""


# --------------------------------------------------------------------------- maths


@dataclass(frozen=True)
class LowRankSVD:
    """``B·A = u·diag(sigma)·vt`` (thin): the SVD of a LoRA product, without its scaling.

    Attributes:
        u: d_out×p, orthonormal columns (float64).
        sigma: p singular values, descending (float64); ``p = min(r, d_out, d_in)``.
        vt: p×d_in, orthonormal rows (float64).
    """

    u: torch.Tensor
    sigma: torch.Tensor
    vt: torch.Tensor


def lora_svd(lora_a: torch.Tensor, lora_b: torch.Tensor) -> LowRankSVD:
    """The SVD of ``lora_b @ lora_a`` through QR of both factors and an SVD of the r×r core.

    Args:
        lora_a: ``A``, r×d_in.
        lora_b: ``B``, d_out×r.

    Raises:
        FactorError: the shapes do not chain (``A`` rows != ``B`` columns).
    """
    import torch

    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise FactorError(
            f"LoRA factors do not chain: A is {tuple(lora_a.shape)}, B is {tuple(lora_b.shape)} "
            "(expected A r×d_in and B d_out×r)"
        )
    a = lora_a.detach().to("cpu", torch.float64)
    b = lora_b.detach().to("cpu", torch.float64)
    q_b, r_b = torch.linalg.qr(b, mode="reduced")  # d_out×m1, m1×r
    q_a, r_a = torch.linalg.qr(a.T, mode="reduced")  # d_in×m2, m2×r
    u, sigma, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # m1×p, p, p×m2
    return LowRankSVD(u=q_b @ u, sigma=sigma, vt=vh @ q_a.T)


def energy_kept(sigma: torch.Tensor, rank: int) -> float:
    """``Σ_{i<rank} σ_i² / Σ σ_i²`` (1.0 for a zero update: nothing to lose)."""
    total = float((sigma**2).sum())
    if total == 0.0:
        return 1.0
    return float((sigma[:rank] ** 2).sum()) / total


def truncate_factors(
    lora_a: torch.Tensor, lora_b: torch.Tensor, rank: int, *, pad: bool = True
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factors of the best rank-``rank`` approximation of ``B·A``.

    The scaling ``s`` is not involved: ``s·B_k·A_k`` is the best rank-k approximation of
    ``s·B·A`` for any scalar ``s``. A ``rank`` at or above the factors' rank rebuilds the
    factorisation without truncating (equal to ``B·A`` up to rounding).

    Args:
        lora_a: ``A``, r×d_in.
        lora_b: ``B``, d_out×r.
        rank: the target rank k >= 1.
        pad: keep the input shapes (``A_k`` r×d_in with zero rows from ``k``, ``B_k`` d_out×r
            with zero columns from ``k``) - what in-place evaluation needs; otherwise ``A_k``
            is k×d_in and ``B_k`` d_out×k (zero-padded when ``k`` exceeds the factors' rank).

    Returns:
        ``(A_k, B_k, energy_kept)``, the factors in the inputs' dtype and device.
    """
    import torch

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise FactorError(f"the target rank must be a positive int, got {rank!r}")
    svd = lora_svd(lora_a, lora_b)
    r = lora_a.shape[0]
    keep = min(rank, svd.sigma.shape[0])
    root = svd.sigma[:keep].sqrt()
    a_k = root[:, None] * svd.vt[:keep]
    b_k = svd.u[:, :keep] * root[None, :]
    width = r if pad else rank
    a_out = torch.zeros((width, lora_a.shape[1]), dtype=torch.float64)
    b_out = torch.zeros((lora_b.shape[0], width), dtype=torch.float64)
    n = min(keep, width)
    a_out[:n] = a_k[:n]
    b_out[:, :n] = b_k[:, :n]
    return (a_out.to(lora_a.device, lora_a.dtype), b_out.to(lora_b.device, lora_b.dtype),
            energy_kept(svd.sigma, keep))


# --------------------------------------------------------------------------- adapter files


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA module of a saved adapter.

    Attributes:
        name: the module's name inside the task model (``model.layers.3.mlp.up_proj``).
        key: the module's key prefix in the safetensors file.
        lora_a: ``A`` (r×d_in), as stored.
        lora_b: ``B`` (d_out×r), as stored.
        scaling: ``lora_alpha / r`` (``/ √r`` with rsLoRA), from the adapter config.
        magnitude: DoRA's magnitude vector (d_out), ``None`` without DoRA.
    """

    name: str
    key: str
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])


@dataclass(frozen=True)
class SavedAdapter:
    """A peft LoRA adapter read from disk (``adapter_config.json`` + safetensors)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    modules: tuple[LoraFactors, ...]

    @property
    def rank(self) -> int:
        """The largest module rank (the config's ``r`` unless a rank pattern raises it)."""
        return max((m.rank for m in self.modules), default=int(self.config.get("r", 0)))


def scaling_of(config: Mapping[str, Any], module_name: str, rank: int) -> float:
    """peft's scaling of one module: ``alpha / r`` (``alpha / √r`` with rsLoRA); ``alpha``
    comes from ``alpha_pattern`` when a pattern matches the module (peft's own matcher)."""
    alpha = config.get("lora_alpha", 8)
    pattern = config.get("alpha_pattern") or {}
    if pattern:
        from peft.utils.other import get_pattern_key

        alpha = pattern.get(get_pattern_key(pattern.keys(), module_name), alpha)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_adapter(adapter_dir: str | Path) -> SavedAdapter:
    """Read a saved peft LoRA adapter: config, every tensor, and its LoRA modules.

    Raises:
        FactorError: naming the file, when it is no LoRA adapter or a factor is missing.
    """
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    config_file, weights_file = path / CONFIG, path / WEIGHTS
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FactorError(f"{file}: no such file (not a saved peft adapter)")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise FactorError(f"{config_file}: peft_type is {config.get('peft_type')!r}, "
                               "not 'LORA'")
    tensors = load_file(str(weights_file))
    parts: dict[str, dict[str, str]] = {}
    for key in tensors:
        match = _LORA_KEY.match(key)
        if match:
            parts.setdefault(match["module"], {})[match["part"]] = key
    modules = []
    for prefix in sorted(parts):
        found = parts[prefix]
        if set(found) != {"A", "B"}:
            raise FactorError(f"{weights_file}: {prefix} has lora_{next(iter(found))} "
                                   "but not its other factor")
        a, b = tensors[found["A"]], tensors[found["B"]]
        name = prefix.removeprefix(_PEFT_PREFIX)
        magnitude = tensors.get(prefix + _MAGNITUDE_SUFFIX)
        if config.get("use_dora") and magnitude is None:
            raise FactorError(f"{weights_file}: DoRA adapter without a magnitude vector "
                                   f"for {prefix}")
        modules.append(LoraFactors(name=name, key=prefix, lora_a=a, lora_b=b,
                                   scaling=scaling_of(config, name, int(a.shape[0])),
                                   magnitude=magnitude))
    if not modules:
        raise FactorError(f"{weights_file}: no LoRA factors (lora_A/lora_B) found")
    return SavedAdapter(path=path, config=config, tensors=tensors, modules=tuple(modules))


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank ``r`` of a saved adapter, from its ``adapter_config.json`` (the largest
    value of ``rank_pattern`` when that raises it) - what :func:`lorascope.core.ablation.resolve_sweep`
    needs as ``rank=`` for an ``svd`` sweep. No tensors are read."""
    file = Path(adapter_dir) / CONFIG
    if not file.is_file():
        raise FactorError(f"{file}: no such file (not a saved peft adapter)")
    config = json.loads(file.read_text())
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    ranks = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    if not ranks:
        raise FactorError(f"{file}: no integer 'r'")
    return max(ranks)


def alpha_for(scaling: float, rank: int, *, rslora: bool = False) -> float:
    """The ``lora_alpha`` for which peft's scaling of a rank-``rank`` module is exactly
    ``scaling``: ``scaling·rank`` (``scaling·√rank`` with rsLoRA), moved by a few ulps when
    float division would not give ``scaling`` back.

    Raises:
        FactorError: no float within 4 ulps does (not seen in practice).
    """
    divisor = math.sqrt(rank) if rslora else rank
    candidate = scaling * divisor
    for _ in range(4):
        if candidate / divisor == scaling:
            return candidate
        candidate = math.nextafter(candidate, math.inf if candidate / divisor < scaling
                                   else -math.inf)
    if candidate / divisor == scaling:
        return candidate
    raise FactorError(f"no lora_alpha gives scaling {scaling!r} at rank {rank}")
