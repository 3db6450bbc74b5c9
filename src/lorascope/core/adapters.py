"""Adapter manifests: what an extracted (or pruned, or compressed) adapter carries, and the
check that an adapter is loaded onto the base model it was trained on.

An adapter directory holds ``adapter_model.safetensors`` and ``adapter_config.json`` (what a
plain peft user loads) and ``manifest.json``: the sha256 of every file, the base model
(source, revision, weights hash) and what produced it. Written by extraction
(:mod:`lorascope.extraction`), boundary pruning and SVD compression; read by every stage that
loads an adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio

MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def file_digests(adapter_dir: str | Path, names: Iterable[str] = ADAPTER_FILES) -> dict[str, str]:
    """``{file name: sha256}`` of an adapter's files (a manifest's ``files``)."""
    return {name: fileio.sha256_file(Path(adapter_dir) / name) for name in names}


def variant_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's ``variant`` block (without ``converted``): the LoRA variant an adapter's
    ``adapter_config.json`` says it was trained as (canonical names, see
    :mod:`lorascope.core.variants`) and the peft settings that say so."""
    from lorascope.core import variants

    init = config.get("init_lora_weights", True)
    ours = str(init).lower() if isinstance(init, str) else variants.DEFAULT_INIT
    ours = "pissa" if ours.startswith("pissa") else ours  # also pissa_niter_<n>
    names = variants.from_flags(
        dora=bool(config.get("use_dora")), rslora=bool(config.get("use_rslora")),
        init=ours if ours in variants.INITS else variants.DEFAULT_INIT,
    )
    peft = {k: config.get(k) for k in ("r", "lora_alpha", "use_dora", "use_rslora")}
    return {"names": list(names), "peft": {**peft, "init_lora_weights": init}}


class AdapterMismatch(ValueError):
    """An adapter is being loaded onto a base model other than the one it was trained on."""


def base_manifest(base_dir: str | Path) -> dict[str, Any]:
    """The prepared base model's manifest; :class:`AdapterMismatch` when there is none."""
    from lorascope.models.base import read_manifest

    manifest = read_manifest(base_dir)
    if manifest is None:
        raise AdapterMismatch(f"{base_dir} is not a prepared base model (no base_manifest.json)")
    return manifest


def base_model_record(base: dict[str, Any]) -> dict[str, Any]:
    """The ``base_model`` block of a manifest, from the base model's own manifest."""
    return {
        "source": base.get("source"),
        "revision": base.get("revision"),
        "weights_sha256": base.get("weights_sha256"),
        "model_type": base.get("model_type"),
    }


def read_manifest(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: not an extracted adapter (no {MANIFEST})")
    return json.loads(path.read_text())


def verify(adapter_dir: str | Path, base_dir: str | Path) -> dict[str, Any]:
    """Check the adapter's files against its manifest and its base model against ``base_dir``.

    Raises :class:`AdapterMismatch` naming both models when the base differs, and when a file
    was changed after extraction.
    """
    manifest = read_manifest(adapter_dir)
    for name, digest in manifest["files"].items():
        if fileio.sha256_file(Path(adapter_dir) / name) != digest:
            raise AdapterMismatch(f"{adapter_dir}/{name} changed since extraction (sha256 differs)")
    base = base_manifest(Path(base_dir))
    want = manifest["base_model"]
    if want.get("weights_sha256") != base.get("weights_sha256"):
        raise AdapterMismatch(
            f"adapter {adapter_dir} was trained on base model {want.get('source')} "
            f"(weights {str(want.get('weights_sha256'))[:12]}), not on {base.get('source')} in "
            f"{base_dir} (weights {str(base.get('weights_sha256'))[:12]})"
        )
    return manifest


def verified_manifest(adapter_dir: str | Path, base_dir: str | Path) -> dict[str, Any] | None:
    """An extracted adapter's manifest, verified against the base model; None for a bare
    peft directory (e.g. a training checkpoint)."""
    if not (Path(adapter_dir) / MANIFEST).is_file():
        return None
    return verify(adapter_dir, base_dir)
