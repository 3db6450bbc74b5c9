"""The ``train_lora`` stage: train into a resumable work directory, then publish the
checkpoints and logs into the rule's output directory."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, provenance

log = logging.getLogger(__name__)

STAGE = "train_lora"


def train_lora(
    params: Mapping[str, Any],
    base_dir: str | Path,
    train_groups: str | Path,
    work_dir: str | Path,
    out_dir: str | Path,
    code: str | None = None,
) -> None:
    """Train (resuming from ``work_dir`` if a previous attempt of the same run was killed),
    then publish.

    ``work_dir`` is deliberately not a Snakemake output: Snakemake deletes the outputs of an
    incomplete job before rerunning it, and the resumable state must survive that. Its state
    is bound to the run (settings, base weights, training data and ``code``, the stage's code
    version): the state of another run is never resumed.
    """
    from lorascope.training.loop import train
    from lorascope.training.settings import TrainSettings

    raw = dict(params["settings"])
    raw["steps"] = tuple(raw["steps"])
    if isinstance(raw["targets"], list):
        raw["targets"] = tuple(raw["targets"])
    settings = TrainSettings(**raw)
    summary = train(base_dir, train_groups, settings, work_dir, code=code)
    if not summary["complete"]:
        raise RuntimeError(f"training stopped at step {summary['steps_done']} of {settings.total_steps}")
    _publish(Path(work_dir), Path(out_dir))
    fileio.write_json(Path(out_dir) / "provenance.json", provenance.record(STAGE, params))


def _publish(work_dir: Path, out_dir: Path) -> None:
    """Copy checkpoints and logs (not the optimizer state) into ``out_dir`` atomically."""
    with fileio.atomic_dir(out_dir) as tmp:
        shutil.copytree(work_dir, tmp, ignore=shutil.ignore_patterns("state", ".*"), dirs_exist_ok=True)
