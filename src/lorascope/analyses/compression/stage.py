"""The ``export_compressed`` stage: an adapter truncated by SVD to a lower rank, written as a
plain peft adapter (loadable without lorascope).

Every module keeps its place and gets rank k (:func:`lorascope.core.lora_factors.truncate_factors`,
unpadded). ``lora_alpha`` is adjusted so that peft's scaling of the rank-k adapter equals
the source's ``s`` to the last bit (``alpha' = s·k``, or ``s·√k`` with rsLoRA whose scaling
is ``alpha/√r``, nudged by an ulp where float division would not give ``s`` back), so the
export computes exactly what in-place truncation computes. The trained score head
(``modules_to_save``) and everything that is not a LoRA factor are copied unchanged.

**Initialisations that rewrite the base weights** (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA): peft
re-runs them when the adapter is loaded, with the adapter config's ``r``, so an exported
adapter with a smaller ``r`` would load onto a different residual base. :func:`export_compressed`
refuses them (convert such adapters to plain LoRA first, peft's
``path_initial_model_for_weight_conversion``); in-place truncation still works on them and
then truncates the factors relative to the residual base the adapter was trained on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import adapters, fileio, provenance, variants
from lorascope.core.lora_factors import (
    CONFIG,
    WEIGHTS,
    FactorError,
    alpha_for,
    read_adapter,
    truncate_factors,
)

log = logging.getLogger(__name__)

STAGE = "export_compressed"


def _plain(value: float) -> int | float:
    """An integral alpha as an int (how peft configs usually carry it)."""
    return int(value) if float(value).is_integer() else value


def _source_hashes(adapter_dir: Path) -> dict[str, str]:
    """The source adapter's file hashes: from its manifest when extracted, else computed."""
    if (adapter_dir / adapters.MANIFEST).is_file():
        return dict(adapters.read_manifest(adapter_dir)["files"])
    return adapters.file_digests(adapter_dir)


def export_compressed(
    adapter_dir: str | Path,
    out_dir: str | Path,
    rank: int,
    *,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the rank-``rank`` SVD truncation of an adapter as a plain peft adapter.

    Reads ``adapter_dir/{adapter_config.json, adapter_model.safetensors}`` (and its
    ``manifest.json`` when it is an extracted adapter); writes, atomically, ``out_dir`` with
    the same two files and a ``manifest.json``. Every module gets rank ``rank`` (a module of
    smaller rank is zero-padded, exactly), so ``rank_pattern`` is emptied; ``lora_alpha`` is
    set so that each module keeps its scaling bit for bit (:func:`alpha_for`), with an
    ``alpha_pattern`` entry (the escaped module name) for modules whose alpha differs from the
    most common one.
    The manifest keeps the source's ``base_model`` and ``step`` (so
    :func:`lorascope.core.adapters.verify` works on the export as on its source) and adds
    ``compression``: the source adapter and its sha256s, rank from -> to, LoRA parameters
    from -> to, and the energy kept per module (``Σ kept σ² / Σ σ²``) with its mean and min.

    Args:
        adapter_dir: a saved peft LoRA adapter (an extracted one or a bare checkpoint).
        out_dir: where the compressed adapter goes (replaced if present).
        rank: the target rank, ``1 <= rank <= r`` (``rank == r`` re-factorises, no loss).
        params: the config slice to record in the provenance (default ``{"rank": rank}``).

    Returns:
        The manifest written.

    Raises:
        FactorError: a bad rank, an adapter with ``lora_bias``, or one whose
            initialisation rewrites the base weights (PiSSA, OLoRA, ...), naming the file.
    """
    from safetensors.torch import save_file

    source = Path(adapter_dir)
    saved = read_adapter(source)
    config_file = source / CONFIG
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise FactorError(f"export rank must be a positive int, got {rank!r}")
    if rank > saved.rank:
        raise FactorError(f"{config_file}: cannot compress a rank-{saved.rank} adapter to "
                               f"rank {rank} (a larger rank)")
    if saved.config.get("lora_bias"):
        raise FactorError(f"{config_file}: lora_bias adapters are not supported "
                               "(the bias of lora_B is not part of B·A)")
    init = variants.base_rewriting_init(saved.config.get("init_lora_weights"))
    if init is not None:
        raise FactorError(
            f"{config_file}: init_lora_weights={saved.config['init_lora_weights']!r} rewrites "
            f"the base weights when peft loads the adapter ({init}); a compressed copy would "
            "load onto another base. Convert it to plain LoRA first (peft's "
            "path_initial_model_for_weight_conversion)."
        )
    tensors = dict(saved.tensors)
    energy: dict[str, float] = {}
    alphas: dict[str, float] = {}
    params_from = params_to = 0
    rslora = bool(saved.config.get("use_rslora"))
    for module in saved.modules:
        a_k, b_k, kept = truncate_factors(module.lora_a, module.lora_b, rank, pad=False)
        tensors[f"{module.key}.lora_A.weight"] = a_k.contiguous()
        tensors[f"{module.key}.lora_B.weight"] = b_k.contiguous()
        energy[module.name] = kept
        alphas[module.name] = alpha_for(module.scaling, rank, rslora=rslora)
        params_from += module.lora_a.numel() + module.lora_b.numel()
        params_to += a_k.numel() + b_k.numel()
    counts: dict[float, int] = {}
    for value in alphas.values():
        counts[value] = counts.get(value, 0) + 1
    alpha = max(counts, key=lambda v: (counts[v], -v))
    config = dict(saved.config)
    config.update(r=rank, lora_alpha=_plain(alpha), rank_pattern={},
                  alpha_pattern={re.escape(name): _plain(value)
                                 for name, value in alphas.items() if value != alpha})
    hashes = _source_hashes(source)
    source_manifest = (adapters.read_manifest(source)
                       if (source / adapters.MANIFEST).is_file() else {})
    slice_ = dict(params) if params is not None else {"rank": rank}
    with fileio.atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        fileio.write_json(tmp / CONFIG, config)
        values = list(energy.values())
        manifest = {
            "files": adapters.file_digests(tmp),
            "base_model": source_manifest.get("base_model"),
            "step": source_manifest.get("step"),
            "compression": {
                "method": "svd",
                "source": {"adapter_dir": str(source), "files": hashes},
                "rank": {"from": saved.rank, "to": rank},
                "lora_params": {"from": params_from, "to": params_to},
                "scaling": "kept: lora_alpha set so that peft's scaling equals the source's",
                "dora_magnitude": "kept as trained" if saved.config.get("use_dora") else None,
                "energy_kept": energy,
                "energy_kept_mean": sum(values) / len(values),
                "energy_kept_min": min(values),
            },
            **provenance.record(STAGE, slice_, adapter_dir=str(source)),
        }
        fileio.write_json(tmp / adapters.MANIFEST, manifest)
    log.info("compressed %s from rank %d to %d into %s: %d -> %d LoRA parameters, energy kept "
             "mean %.4f (min %.4f)", source, saved.rank, rank, out_dir, params_from, params_to,
             manifest["compression"]["energy_kept_mean"], manifest["compression"]["energy_kept_min"])
    return manifest
