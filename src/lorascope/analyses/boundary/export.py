"""The pruned adapter: LoRA in layers ``0..b`` only, written as a plain peft adapter.

:func:`export_pruned` writes a plain peft adapter holding the LoRA tensors of layers
``0..b`` only, and the trained score head (``modules_to_save``) untouched.
``adapter_config.json``'s ``target_modules`` becomes the explicit list of the kept modules'
full names (as training writes it), so ``PeftModel.from_pretrained`` creates no LoRA layer
above ``b`` - the upper layers run as plain base linears, which is both exact (== the
in-place ablation ``keep_layers_0_b``, tested) and the inference saving the paper is after.
For ``b = L-1`` nothing is dropped and both files are copied byte for byte.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.analyses.boundary.selection import BoundaryError, Selection
from lorascope.core import adapters, fileio, provenance
from lorascope.core.roles import ArchitectureRoles, module_name, parse_module_name, roles_for

log = logging.getLogger(__name__)

STAGE = "prune_boundary"
SELECTION = "selection.json"
WEIGHTS, CONFIG = adapters.ADAPTER_FILES
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.lora_[A-Za-z_]+(?:\.|$)")

Module = tuple[int, str]


@dataclass(frozen=True)
class _TensorInfo:
    key: str
    numel: int
    module: Module | None  # (layer, role) of a LoRA tensor; None for the head


def base_info(base_dir: Path) -> tuple[dict[str, Any], ArchitectureRoles, int]:
    from lorascope.models.base import read_manifest

    manifest = read_manifest(base_dir)
    if manifest is None:
        raise BoundaryError(f"{base_dir}: not a prepared base model (no base_manifest.json)")
    try:
        return manifest, roles_for(manifest["model_type"]), int(manifest["num_layers"])
    except KeyError as err:
        raise BoundaryError(f"{base_dir}/base_manifest.json lacks {err}") from None


def _tensor_table(weights: Path, arch: ArchitectureRoles) -> list[_TensorInfo]:
    """Every tensor of an adapter file with its size and (layer, role), from the header."""
    from safetensors import safe_open

    if not weights.is_file():
        raise BoundaryError(f"{weights}: no such adapter weights file")
    table: list[_TensorInfo] = []
    with safe_open(str(weights), framework="pt") as handle:
        names = handle.keys()
        for key in names:
            numel = 1
            for dim in handle.get_slice(key).get_shape():
                numel *= int(dim)
            match = _LORA_KEY.match(key)
            module = None
            if match is not None:
                module = parse_module_name(arch, match.group("module"))
                if module is None:
                    raise BoundaryError(
                        f"{weights}: LoRA tensor {key!r} is on no {arch.model_type} role "
                        "module; cannot tell which layer it belongs to"
                    )
            table.append(_TensorInfo(key, numel, module))
    return table


def _source_record(adapter_dir: Path, base_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The source adapter's manifest (verified against the base) and its identity record."""
    manifest_path = adapter_dir / adapters.MANIFEST
    manifest = adapters.verify(adapter_dir, base_dir) if manifest_path.is_file() else None
    files = adapters.file_digests(
        adapter_dir, [n for n in adapters.ADAPTER_FILES if (adapter_dir / n).is_file()])
    record = {
        "adapter_dir": str(adapter_dir),
        "files": files,
        "manifest_sha256": fileio.sha256_file(manifest_path) if manifest is not None else None,
    }
    return manifest, record


def _pruned_config(config: Mapping[str, Any], arch: ArchitectureRoles,
                   kept: Sequence[Module], b: int) -> dict[str, Any]:
    """adapter_config with ``target_modules`` = the kept modules' full names, and per-module
    rank/alpha patterns of dropped modules removed."""
    out = dict(config)
    out["target_modules"] = sorted(module_name(arch, layer, role) for layer, role in kept)
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = out.get(key)
        if isinstance(pattern, Mapping):
            out[key] = {name: value for name, value in pattern.items()
                        if (m := parse_module_name(arch, name)) is None or m[0] <= b}
    if isinstance(out.get("layers_to_transform"), list):
        out["layers_to_transform"] = [i for i in out["layers_to_transform"] if i <= b]
    return out


def export_pruned(
    adapter_dir: str | Path,
    base_dir: str | Path,
    b: int,
    out_dir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    selection: Selection | None = None,
) -> dict[str, Any]:
    """Write ``out_dir``: the adapter with LoRA in layers ``0..b`` only, plus ``manifest.json``
    (and ``selection.json`` when a selection is given). Returns the manifest.

    The output is a plain peft adapter (``adapter_model.safetensors`` +
    ``adapter_config.json``) that ``PeftModel.from_pretrained`` loads onto the base; its
    manifest has the fields :func:`lorascope.core.adapters.verify` checks (``files``,
    ``base_model``) plus ``pruned`` (b, layers kept/dropped, modules dropped, LoRA parameters
    kept/removed and the fraction removed, head parameters) and ``source`` (the source
    adapter's folder and sha256s).

    Raises:
        BoundaryError: ``b`` outside ``0..L-1`` (naming the base manifest), no LoRA left at or
            below ``b``, no trained score head in the adapter, or a base without manifest.
        AdapterMismatch: the adapter was extracted for another base model.
    """
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    base, arch, depth = base_info(base_dir)
    if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < depth:
        raise BoundaryError(
            f"boundary b = {b!r} out of range: {base_dir}/base_manifest.json gives "
            f"{depth} layers, so 0 <= b <= {depth - 1}"
        )
    source_manifest, source = _source_record(adapter_dir, base_dir)
    config_path = adapter_dir / CONFIG
    if not config_path.is_file():
        raise BoundaryError(f"{adapter_dir}: not a peft adapter (no {CONFIG})")
    config = json.loads(config_path.read_text())
    tensors = _tensor_table(adapter_dir / WEIGHTS, arch)
    lora = [t for t in tensors if t.module is not None]
    head = [t for t in tensors if t.module is None]
    if not head:
        raise BoundaryError(
            f"{adapter_dir / WEIGHTS}: no trained score head (modules_to_save "
            f"{list(arch.head_modules)}); a pruned adapter without it would score with an "
            "untrained head"
        )
    modules = sorted({t.module for t in lora if t.module is not None})
    kept_modules = [m for m in modules if m[0] <= b]
    dropped_modules = [m for m in modules if m[0] > b]
    if not kept_modules:
        raise BoundaryError(
            f"{adapter_dir}: no LoRA modules in layers 0..{b} (the adapter trains layers "
            f"{sorted({m[0] for m in modules})}); nothing would be left"
        )
    drop = {t.key for t in lora if t.module is not None and t.module[0] > b}
    removed = sum(t.numel for t in lora if t.key in drop)
    total = sum(t.numel for t in lora)
    pruned_info = {
        "b": b,
        "num_layers": depth,
        "layers_kept": list(range(b + 1)),
        "layers_dropped": list(range(b + 1, depth)),
        "modules_kept": len(kept_modules),
        "modules_dropped": [[layer, role] for layer, role in dropped_modules],
        "params": {
            "lora_total": total,
            "lora_kept": total - removed,
            "lora_removed": removed,
            "fraction_removed": removed / total if total else 0.0,
            "head": sum(t.numel for t in head),
        },
    }
    with fileio.atomic_dir(out_dir) as tmp:
        if not dropped_modules:  # b covers every trained layer: the adapter itself
            for name in adapters.ADAPTER_FILES:
                shutil.copy2(adapter_dir / name, tmp / name)
        else:
            _write_pruned_weights(adapter_dir / WEIGHTS, tmp / WEIGHTS, drop)
            fileio.write_text(tmp / CONFIG, json.dumps(
                _pruned_config(config, arch, kept_modules, b), indent=2, sort_keys=True) + "\n")
        manifest = {
            "files": adapters.file_digests(tmp),
            "base_model": (source_manifest or {}).get("base_model") or {
                "source": base.get("source"),
                "revision": base.get("revision"),
                "weights_sha256": base.get("weights_sha256"),
                "model_type": base.get("model_type"),
            },
            "step": (source_manifest or {}).get("step"),
            "train_loss": (source_manifest or {}).get("train_loss"),
            "pruned": pruned_info,
            "source": source,
            **provenance.record(STAGE, dict(params or {"b": b})),
        }
        if selection is not None:
            manifest["selection"] = {"measure": selection.measure, "value": selection.value,
                                     "sources": list(selection.sources)}
            fileio.write_json(tmp / SELECTION, {**selection.to_dict(),
                                                "provenance": provenance.record(
                                                    STAGE, dict(params or {}))})
        fileio.write_json(tmp / adapters.MANIFEST, manifest)
    log.info("pruned %s at b = %d: %d of %d LoRA modules dropped, %.1f%% of LoRA parameters "
             "removed -> %s", adapter_dir, b, len(dropped_modules), len(modules),
             100 * pruned_info["params"]["fraction_removed"], out_dir)
    return manifest


def _write_pruned_weights(source: Path, dest: Path, drop: set[str]) -> None:
    """Copy the safetensors file without the ``drop`` tensors, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        names = handle.keys()
        kept = {key: handle.get_tensor(key) for key in names if key not in drop}
    save_file(kept, str(dest), metadata=metadata)
