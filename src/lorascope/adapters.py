"""Standalone adapters: one training checkpoint extracted with a manifest, and the check that
an adapter is loaded onto the base model it was trained on.

An extracted adapter is what a plain peft user loads (``adapter_model.safetensors`` +
``adapter_config.json``); ``manifest.json`` beside them records the sha256 of every file, the
base model (source, revision, weights hash), the step, the training loss at that step, the
config slice that produced it and the package versions.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope import fileio, provenance

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class AdapterMismatch(ValueError):
    """An adapter is being loaded onto a base model other than the one it was trained on."""


def _base_manifest(base_dir: Path) -> dict[str, Any]:
    from lorascope.models.base import read_manifest

    manifest = read_manifest(base_dir)
    if manifest is None:
        raise AdapterMismatch(f"{base_dir} is not a prepared base model (no base_manifest.json)")
    return manifest


def _loss_at(train_dir: Path, step: int) -> float | None:
    log_file = train_dir / "train_log.csv"
    if not log_file.is_file():
        return None
    with open(log_file, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["step"]) == step:
                return float(row["loss"])
    return None


def _probe(checkpoint: Path) -> dict[str, Any] | None:
    """Scores of a fixed training group recorded when the checkpoint was saved."""
    path = checkpoint / "checkpoint.json"
    return json.loads(path.read_text()).get("probe") if path.is_file() else None


def extract(
    params: Mapping[str, Any], train_dir: str | Path, base_dir: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Extract checkpoint ``params['step']`` of a training run into ``out_dir``."""
    train_dir, base_dir, out_dir = Path(train_dir), Path(base_dir), Path(out_dir)
    step = params["step"]
    source = train_dir / f"step-{step}"
    missing = [f for f in ADAPTER_FILES if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: no checkpoint of step {step} (missing {', '.join(missing)})")
    base = _base_manifest(base_dir)
    with fileio.atomic_dir(out_dir) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(source / name, tmp / name)
        manifest = {
            "files": {name: fileio.sha256_file(tmp / name) for name in ADAPTER_FILES},
            "base_model": {
                "source": base.get("source"),
                "revision": base.get("revision"),
                "weights_sha256": base.get("weights_sha256"),
                "model_type": base.get("model_type"),
            },
            "step": step,
            "train_loss": _loss_at(train_dir, step),
            "probe": _probe(source),
            **provenance.record("extract_adapter", params),
        }
        fileio.write_json(tmp / MANIFEST, manifest)
    log.info("extracted step %d of %s into %s", step, train_dir, out_dir)
    return manifest


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
    base = _base_manifest(Path(base_dir))
    want = manifest["base_model"]
    if want.get("weights_sha256") != base.get("weights_sha256"):
        raise AdapterMismatch(
            f"adapter {adapter_dir} was trained on base model {want.get('source')} "
            f"(weights {str(want.get('weights_sha256'))[:12]}), not on {base.get('source')} in "
            f"{base_dir} (weights {str(base.get('weights_sha256'))[:12]})"
        )
    return manifest
