"""The ``extract_adapter`` stage: one training checkpoint as a standalone adapter + manifest.

An extracted adapter is what a plain peft user loads (``adapter_model.safetensors`` +
``adapter_config.json``) onto the *original* base model; ``manifest.json`` beside them records
the sha256 of every file, the base model (source, revision, weights hash), the step, the
training loss at that step, the LoRA variant and how it was stored, the config slice that
produced it and the package versions.

Variants whose initialisation rewrites the base weights (PiSSA, OLoRA: the training model
computes ``W_res x + s B A x`` with ``W_res = W - s B0 A0``) are converted into a standard LoRA
delta on the original W: ``s (B A - B0 A0) = s [B | -B0] [A ; A0]``, an adapter of rank 2r
(alpha doubled, or times sqrt(2) with rsLoRA, so that the scale s is unchanged). DoRA
magnitudes and the trained head are carried over as they are: DoRA normalises
``W + delta``, which is the same matrix. So switching a module off still means "remove its
fine-tuning delta" (the original W is used there). The conversion is exact in real numbers;
in floating point the extracted adapter reproduces training-time scores to rounding error
(the manifest's ``probe`` lets anyone check). peft's own conversion
(``save_pretrained(path_initial_model_for_weight_conversion=...)``) keeps only lora_A/lora_B
and so drops the trained score head and DoRA's magnitudes; the same algebra is done here on
the saved tensors instead, without loading the model. Other variants (DoRA, rsLoRA, EVA) add
nothing to W at initialisation and are copied unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, provenance, variants
from lorascope.core.names import INITIAL_ADAPTER, TRAIN_LOG, checkpoint_name
from lorascope.core.adapters import (
    ADAPTER_FILES,
    MANIFEST,
    base_manifest,
    base_model_record,
    file_digests,
    variant_record,
)

STAGE = "extract_adapter"

log = logging.getLogger(__name__)


def _loss_at(train_dir: Path, step: int) -> float | None:
    log_file = train_dir / TRAIN_LOG
    if not log_file.is_file():
        return None
    with open(log_file, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["step"]) == step:
                return float(row["loss"])
    return None


def _probe(checkpoint: Path) -> dict[str, Any] | None:
    """Scores of a fixed training group recorded when the checkpoint was saved, and the
    precision that computed them (reproduce them at that precision)."""
    path = checkpoint / "checkpoint.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    probe = saved.get("probe")
    if probe is not None and saved.get("precision"):
        probe = {**probe, "precision": saved["precision"].get("resolved")}
    return probe


def _check_trained_run(checkpoint: Path, params: Mapping[str, Any], base: Mapping[str, Any],
                       base_dir: Path) -> None:
    """The checkpoint must come from the run asked for: trained on this base model's weights
    (its fingerprint's, not whatever base is current) with these settings.

    Raises:
        AdapterMismatch: naming what differs.
    """
    from lorascope.core.adapters import AdapterMismatch

    file = checkpoint / "checkpoint.json"
    if not file.is_file():
        raise AdapterMismatch(f"{checkpoint}: no checkpoint.json; not a lorascope checkpoint")
    saved = json.loads(file.read_text())
    run = saved.get("fingerprint")
    if not isinstance(run, Mapping):
        raise AdapterMismatch(f"{file}: the checkpoint records no run fingerprint (trained by an "
                              "older lorascope); retrain it")
    if run.get("base_weights_sha256") != base.get("weights_sha256"):
        raise AdapterMismatch(f"{checkpoint} was trained on other base weights than those of "
                              f"{base_dir} (the run's fingerprint and base_manifest.json differ)")
    wanted = params.get("settings")
    if wanted is not None and run.get("settings") != _train_settings(wanted):
        raise AdapterMismatch(f"{checkpoint} was trained with other settings than the ones "
                              "asked for (a stale training directory?)")


def _train_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainSettings dict a train slice's settings become (defaults filled)."""
    from lorascope.training.settings import TrainSettings

    values = dict(raw)
    values["steps"] = tuple(values["steps"])
    if isinstance(values.get("targets"), list):
        values["targets"] = tuple(values["targets"])
    return TrainSettings(**values).to_dict()


def converted_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter_config of :func:`delta_from_initial`'s tensors: rank 2r, the same scale
    (alpha doubled; times sqrt(2) with rsLoRA, whose scale is alpha / sqrt(r)), and peft's
    default initialisation, so that loading it leaves the base weights alone."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("cannot convert an adapter with rank_pattern/alpha_pattern")
    out = dict(config)
    out["r"] = 2 * config["r"]
    out["lora_alpha"] = config["lora_alpha"] * (math.sqrt(2) if config.get("use_rslora") else 2)
    out["init_lora_weights"] = True
    return out


def delta_from_initial(trained: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """LoRA tensors of ``B A - B0 A0`` (rank 2r): ``A' = [A ; A0]``, ``B' = [B | -B0]``.

    ``trained`` and ``initial`` are peft adapter state dicts (``...lora_A.weight`` of shape
    (r, in), ``...lora_B.weight`` of shape (out, r)); every other tensor (score head, DoRA
    magnitudes) is taken from ``trained``.
    """
    import torch

    lora = sorted(k for k in trained if ".lora_A." in k or ".lora_B." in k)
    missing = [k for k in lora if k not in initial]
    if missing:
        raise ValueError(
            f"the initial adapter lacks {len(missing)} LoRA tensors, e.g. {missing[0]}"
        )
    out: dict[str, Any] = {}
    for key, tensor in trained.items():
        if ".lora_A." in key:
            out[key] = torch.cat([tensor, initial[key].to(tensor.dtype)], dim=0).contiguous()
        elif ".lora_B." in key:
            out[key] = torch.cat([tensor, -initial[key].to(tensor.dtype)], dim=1).contiguous()
        else:
            out[key] = tensor
    return out


def _write_converted(source: Path, initial_dir: Path, dest: Path) -> dict[str, Any]:
    """Write ``source`` (a PiSSA/OLoRA checkpoint) into ``dest`` as a delta on the original
    base; returns the manifest's ``converted`` block."""
    from safetensors.torch import load_file, save_file

    weights = initial_dir / ADAPTER_FILES[0]
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights}: the initial adapter of this run is missing; it is needed to express "
            f"{source} as a LoRA delta on the original base model (retrain the run)"
        )
    config = json.loads((source / ADAPTER_FILES[1]).read_text())
    tensors = delta_from_initial(load_file(str(source / ADAPTER_FILES[0])), load_file(str(weights)))
    save_file(tensors, str(dest / ADAPTER_FILES[0]), metadata={"format": "pt"})
    new_config = converted_config(config)
    fileio.write_json(dest / ADAPTER_FILES[1], new_config)
    return {
        "method": "delta_from_initial",
        "formula": "s (B A - B0 A0) = s [B | -B0] [A ; A0]",
        "initial_adapter_sha256": fileio.sha256_file(weights),
        "rank": new_config["r"],
        "lora_alpha": new_config["lora_alpha"],
        "exact": "to floating-point rounding (W + delta vs W_res + s B A)",
    }


def extract_adapter(
    params: Mapping[str, Any], train_dir: str | Path, base_dir: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Extract checkpoint ``params['step']`` of a training run into ``out_dir``.

    Reads ``train_dir/step-{step}/`` (and, for PiSSA/OLoRA, ``train_dir/initial/``), the
    loss log and the base model's manifest; writes ``adapter_model.safetensors``,
    ``adapter_config.json`` and ``manifest.json`` into ``out_dir`` atomically. The manifest's
    ``variant`` block names the variant, the peft settings it was trained with and
    ``converted`` (``None``, or how the adapter was rewritten and its new rank); ``rank`` is
    the LoRA rank of the extracted files.
    """
    train_dir, base_dir, out_dir = Path(train_dir), Path(base_dir), Path(out_dir)
    step = params["step"]
    source = train_dir / checkpoint_name(step)
    missing = [f for f in ADAPTER_FILES if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: no checkpoint of step {step} (missing {', '.join(missing)})")
    base = base_manifest(base_dir)
    _check_trained_run(source, params, base, base_dir)
    config = json.loads((source / ADAPTER_FILES[1]).read_text())
    variant = variant_record(config)
    with fileio.atomic_dir(out_dir) as tmp:
        if variants.rewrites_base(variant["peft"]["init_lora_weights"]):
            variant["converted"] = _write_converted(source, train_dir / INITIAL_ADAPTER, tmp)
        else:
            variant["converted"] = None
            for name in ADAPTER_FILES:
                shutil.copy2(source / name, tmp / name)
        rank = json.loads((tmp / ADAPTER_FILES[1]).read_text())["r"]
        manifest = {
            "files": file_digests(tmp),
            "base_model": base_model_record(base),
            "step": step,
            "rank": rank,
            "variant": variant,
            "train_loss": _loss_at(train_dir, step),
            "probe": _probe(source),
            **provenance.record(STAGE, params),
        }
        fileio.write_json(tmp / MANIFEST, manifest)
    log.info("extracted step %d of %s into %s", step, train_dir, out_dir)
    return manifest
