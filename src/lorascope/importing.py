"""The ``import_adapter`` stage: a LoRA adapter trained elsewhere, as an extracted adapter.

The ``extract_adapter`` of adapters lorascope did not train: the adapter (a local peft
directory, or a hub adapter from the local cache) is checked against the prepared base model
(:func:`lorascope.core.foreign.inspect_adapter`: LoRA modules mapped to roles within the
base's depth and widths, nothing trained but LoRA and the head), its two files are copied, and
``manifest.json`` records their sha256s, the base model, the step it is known by, its rank and
variant, and where it came from (with the source files' sha256s). Every sweep and analysis then
reads it like an extracted checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, provenance
from lorascope.core.adapters import (
    ADAPTER_FILES,
    MANIFEST,
    base_manifest,
    base_model_record,
    file_digests,
    variant_record,
)

STAGE = "import_adapter"

log = logging.getLogger(__name__)


def source_dir(source: Mapping[str, Any]) -> Path:
    """Where an imported adapter's files are: its directory, or its hub snapshot."""
    from lorascope.core.foreign import hub_adapter_dir

    if "path" in source:
        return Path(source["path"])
    return hub_adapter_dir(source["hub"], source.get("revision"))


def import_adapter(params: Mapping[str, Any], base_dir: str | Path, out_dir: str | Path
                   ) -> dict[str, Any]:
    """Check the adapter ``params['source']`` against the base model in ``base_dir`` and write
    it with its manifest into ``out_dir`` (atomically).

    Raises:
        AdapterMismatch: the adapter does not fit the base (naming what differs), or a hub
            adapter is not in the local cache.
    """
    from lorascope.core.foreign import inspect_adapter

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    directory = source_dir(params["source"])
    base = base_manifest(base_dir)
    info = inspect_adapter(directory, json.loads((base_dir / "config.json").read_text()))
    with fileio.atomic_dir(out_dir) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(directory / name, tmp / name)
        manifest = {
            "files": file_digests(tmp),
            "base_model": base_model_record(base),
            "step": params["step"],
            "rank": info.rank,
            "variant": {**variant_record(info.config), "converted": None},
            "train_loss": None,
            "probe": None,
            "imported": {
                **dict(params["source"]),
                "directory": str(directory),
                "files": file_digests(directory),
                "base_model_name_or_path": info.base_model,
                "roles": list(info.roles),
                "modules": len(info.modules),
                "head": list(info.head),
            },
            **provenance.record(STAGE, params),
        }
        fileio.write_json(tmp / MANIFEST, manifest)
    log.info("imported %s (rank %d, %s, %d modules) into %s", directory, info.rank,
             info.targets_name, len(info.modules), out_dir)
    return manifest
