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
    from lorascope.training.loop import train_locked
    from lorascope.training.settings import TrainSettings
    from lorascope.training.state import WorkDirLock

    raw = dict(params["settings"])
    raw["steps"] = tuple(raw["steps"])
    if isinstance(raw["targets"], list):
        raw["targets"] = tuple(raw["targets"])
    settings = TrainSettings(**raw)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with WorkDirLock(work_dir):  # held until the run is published: no other trainer between
        summary = train_locked(base_dir, train_groups, settings, work_dir, code=code)
        if not summary["complete"]:
            raise RuntimeError(f"training stopped at step {summary['steps_done']} of "
                               f"{settings.total_steps}")
        _publish(work_dir, Path(out_dir), params)


def _publish(work_dir: Path, out_dir: Path, params: Mapping[str, Any]) -> None:
    """Copy the run's checkpoints and logs (:func:`~lorascope.training.loop.run_files`: not
    the resume state, nothing else in the work dir) into ``out_dir`` atomically."""
    from lorascope.training.loop import run_files

    with fileio.atomic_dir(out_dir) as tmp:
        for path in run_files(work_dir):
            if path.is_dir():
                shutil.copytree(path, tmp / path.name)
            else:
                shutil.copy2(path, tmp / path.name)
        fileio.write_json(tmp / "provenance.json", provenance.record(STAGE, params))
