"""The checkpoints of one training run as the base-vs-checkpoints analyses read them: checked,
loaded once, and visited step by step, step 0 being the base model.

Step 0 is the *base model*: every LoRA update switched off in place
(:func:`lorascope.core.switching.zeroed`), read by the trained score head of the run's **last**
checkpoint (the base has no trained head of its own; a fresh one would measure noise, and "no
LoRA, trained head" is what the ablation tables call "No LoRA updates"). For initialisations
that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ) switching LoRA off leaves the
residual model, not the original base: :attr:`Run.original_base` says so.

Loading: the base model and the last checkpoint are loaded once
(:func:`lorascope.models.adapted.load_adapted`); every other checkpoint of the run (same
``adapter_config.json``) is swapped into the same LoRA layers and head copy
(:func:`~lorascope.models.adapted.swap_checkpoint`; scores bitwise those of a fresh load).
:func:`visit` orders the steps so that the last head is in place for step 0: the base first,
then the last checkpoint as loaded, then the others.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core import variants
from lorascope.core.adapters import verified_manifest

if TYPE_CHECKING:
    import torch

    from lorascope.core.roles import ArchitectureRoles

log = logging.getLogger(__name__)

#: The base model's step in every base-vs-checkpoints table.
BASE_STEP = 0


def checked_checkpoints(adapter_dirs_by_step: Mapping[int, str | Path], stage: str
                        ) -> list[tuple[int, Path]]:
    """``(step, dir)`` sorted by step, checked: positive int steps, existing peft dirs."""
    if not adapter_dirs_by_step:
        raise ValueError(f"{stage}: no adapter checkpoints given")
    out: list[tuple[int, Path]] = []
    for step, directory in adapter_dirs_by_step.items():
        if isinstance(step, bool) or not isinstance(step, int) or step <= BASE_STEP:
            raise ValueError(f"{stage}: checkpoint step {step!r} ({directory}) must be an int > "
                             f"{BASE_STEP}; step {BASE_STEP} is the base model")
        if not (Path(directory) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{stage}: {directory} (step {step}) is no peft adapter "
                                    "directory (no adapter_config.json)")
        out.append((step, Path(directory)))
    return sorted(out)


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text())


def check_one_run(checkpoints: Sequence[tuple[int, Path]], stage: str) -> dict[str, Any]:
    """The checkpoints' common adapter config; ValueError naming the keys that differ."""
    step0, dir0 = checkpoints[0]
    reference = _adapter_config(dir0)
    for step, directory in checkpoints[1:]:
        config = _adapter_config(directory)
        differ = sorted(k for k in set(reference) | set(config)
                        if reference.get(k) != config.get(k))
        if differ:
            raise ValueError(
                f"{stage}: checkpoints {dir0} (step {step0}) and {directory} (step {step}) have "
                f"different adapter configs ({', '.join(differ)}); it compares checkpoints of "
                "one training run"
            )
    return reference


@dataclass(frozen=True)
class Run:
    """The checked checkpoints of one run (no model loaded yet).

    Attributes:
        checkpoints: ``(step, dir)`` in step order.
        adapter_config: their common ``adapter_config.json``.
        manifests: per step, the verified manifest (extracted checkpoints match the base).
        original_base: switching LoRA off gives the original base weights (False for
            initialisations that rewrite them).
    """

    checkpoints: tuple[tuple[int, Path], ...]
    adapter_config: dict[str, Any]
    manifests: dict[int, dict[str, Any] | None]
    original_base: bool

    @property
    def last_step(self) -> int:
        return self.checkpoints[-1][0]

    @property
    def last_dir(self) -> Path:
        return self.checkpoints[-1][1]

    @property
    def dirs(self) -> dict[int, Path]:
        return dict(self.checkpoints)

    def check_steps(self, steps: Sequence[int], stage: str) -> list[int]:
        """``steps`` sorted and each once; ValueError naming ``steps`` for one that is no
        checkpoint given to the stage."""
        missing = sorted(set(steps) - set(self.dirs))
        if missing:
            raise ValueError(f"{stage} params: 'steps' names {missing} but no checkpoint "
                             f"directory was given for them (given: {sorted(self.dirs)})")
        return sorted(set(steps))


def read_run(adapter_dirs_by_step: Mapping[int, str | Path], base_dir: str | Path, stage: str
             ) -> Run:
    """Check the checkpoints of one run against each other and against the base model."""
    checkpoints = checked_checkpoints(adapter_dirs_by_step, stage)
    config = check_one_run(checkpoints, stage)
    manifests = {step: verified_manifest(d, base_dir) for step, d in checkpoints}
    original = not variants.rewrites_base(config.get("init_lora_weights"))
    if not original:
        log.warning("init_lora_weights=%r rewrites the base weights: step %d (LoRA off) is the "
                    "residual model, not the original base", config["init_lora_weights"],
                    BASE_STEP)
    return Run(tuple(checkpoints), config, manifests, original)


def load_run(run: Run, base_dir: str | Path, *, dtype: str, device: str,
             attention: str | None) -> tuple[torch.nn.Module, Any, ArchitectureRoles, float]:
    """The base model with the run's last checkpoint loaded: ``(model, tokenizer, arch,
    seconds)``."""
    from lorascope.models.adapted import load_adapted

    started = time.perf_counter()
    model, tokenizer, arch = load_adapted(base_dir, run.last_dir, dtype=dtype, device=device,
                                          attention=attention)
    return model, tokenizer, arch, time.perf_counter() - started


def visit(model: torch.nn.Module, arch: ArchitectureRoles, run: Run, steps: Sequence[int],
          device: str, *, base: bool = True, stage: str = "visit"
          ) -> Iterator[tuple[int, float]]:
    """Put the loaded model (:func:`load_run`) in the state of each step in turn and yield
    ``(step, seconds the swap took)``: the base (step 0, when ``base``) first, with every LoRA
    update switched off for as long as the caller works on it, then the last checkpoint (when
    among ``steps``), then the other ``steps`` ascending.

    The model must be as :func:`load_run` left it (the last checkpoint in place); afterwards it
    holds the last step visited. LoRA is switched back on when the caller asks for the next
    step, or when the generator is closed: a caller that may stop early (an exception inside
    its loop) wraps it in :func:`contextlib.closing`, so step 0's switch is undone at once.
    """
    from lorascope.core import switching
    from lorascope.models.adapted import swap_checkpoint

    chosen = run.check_steps(steps, stage)
    if base:
        modules = switching.lora_modules(model, arch)
        with switching.zeroed(model, arch, modules.keys()):
            yield BASE_STEP, 0.0
    order = ([run.last_step] if run.last_step in chosen else []) + [
        s for s in chosen if s != run.last_step]
    dirs = run.dirs
    for step in order:
        t0 = time.perf_counter()
        if step != run.last_step:
            swap_checkpoint(model, dirs[step], device)
        yield step, time.perf_counter() - t0
