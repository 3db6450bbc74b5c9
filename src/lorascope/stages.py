"""Entry points of the model stages: ``prepare_base`` and ``train_lora``.

Each wires its config slice into the package: base model preparation (tiny models read the
study's passages from the training groups), and LoRA training into a resumable work
directory whose checkpoints are published into the rule's output directory at the end.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lorascope import fileio, provenance

log = logging.getLogger(__name__)


def passage_texts(train_groups: str | Path) -> Iterator[str]:
    """Unique passage texts of the training groups (the tiny models' pretraining corpus)."""
    from lorascope.contracts import TRAIN_GROUPS, iter_batches

    seen: set[str] = set()
    for batch in iter_batches(train_groups, TRAIN_GROUPS):
        for pos, negs in zip(batch.column("pos_text").to_pylist(), batch.column("neg_texts").to_pylist()):
            for text in (pos, *negs):
                if text not in seen:
                    seen.add(text)
                    yield text


def prepare_base(params: Mapping[str, Any], out_dir: str | Path, train_groups: str | Path | None) -> None:
    from lorascope.models.base import BaseModelSpec, prepare_base as _prepare

    spec = BaseModelSpec.from_source(params["source"], seed=params["seed"])
    texts = (lambda: passage_texts(train_groups)) if train_groups else None
    manifest = _prepare(spec, out_dir, texts)
    fileio.write_json(Path(out_dir) / "provenance.json", provenance.record("prepare_base", params))
    log.info("base model %s: %s", params["model"], manifest.get("source"))


def train_lora(
    params: Mapping[str, Any],
    base_dir: str | Path,
    train_groups: str | Path,
    work_dir: str | Path,
    out_dir: str | Path,
) -> None:
    """Train (resuming from ``work_dir`` if a previous attempt was killed), then publish.

    ``work_dir`` is deliberately not a Snakemake output: Snakemake deletes the outputs of an
    incomplete job before rerunning it, and the resumable state must survive that.
    """
    from lorascope.train import TrainSettings, train

    raw = dict(params["settings"])
    raw["steps"] = tuple(raw["steps"])
    if isinstance(raw["targets"], list):
        raw["targets"] = tuple(raw["targets"])
    settings = TrainSettings(**raw)
    summary = train(base_dir, train_groups, settings, work_dir)
    if not summary["complete"]:
        raise RuntimeError(f"training stopped at step {summary['steps_done']} of {settings.total_steps}")
    _publish(Path(work_dir), Path(out_dir))
    fileio.write_json(Path(out_dir) / "provenance.json", provenance.record("train_lora", params))


def _publish(work_dir: Path, out_dir: Path) -> None:
    """Copy checkpoints and logs (not the optimizer state) into ``out_dir`` atomically."""
    with fileio.atomic_dir(out_dir) as tmp:
        shutil.copytree(work_dir, tmp, ignore=shutil.ignore_patterns("state", ".*"), dirs_exist_ok=True)


def trained_modules(adapter_dir: str | Path, arch) -> set[tuple[int, str]]:
    """The (layer, role) modules an adapter has LoRA weights for, from its adapter_config."""
    import json

    from lorascope.roles import parse_module_name

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    targets = config["target_modules"]
    if isinstance(targets, str):
        raise ValueError(f"{adapter_dir}: target_modules is a pattern ({targets!r}), not a list")
    found = {parse_module_name(arch, name) for name in targets}
    found.discard(None)
    return found  # type: ignore[return-value]


def evaluate(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dir: str | Path,
    split_dir: str | Path,
    out_scores: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
) -> None:
    """Check the adapter belongs to this base, resolve the sweep against the model and the
    modules the adapter trained, then score every ablation (:func:`lorascope.evaluate.evaluate`)."""
    from lorascope import adapters
    from lorascope.ablation import resolve_sweep
    from lorascope.compression import adapter_rank
    from lorascope.evaluate import evaluate as run
    from lorascope.models.base import read_manifest
    from lorascope.roles import roles_for

    adapters.verify(adapter_dir, base_dir)
    base = read_manifest(base_dir) or {}
    arch = roles_for(base["model_type"])
    ablations = resolve_sweep(
        params["sweep"],
        params["sweep_spec"],
        num_layers=base["num_layers"],
        arch_roles=arch,
        trained=trained_modules(adapter_dir, arch),
        rank=adapter_rank(adapter_dir),
    )
    resolved = {**params, "ablations": [a.to_params() for a in ablations]}
    run(resolved, base_dir, adapter_dir, split_dir, out_scores, out_metrics, out_summary)
