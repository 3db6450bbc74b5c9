"""Resumable training state: everything needed to continue a run bit for bit.

``out_dir/state/`` holds the trainable tensors, the optimizer and scheduler states, every RNG
state, the data position, the step, and the loss log so far. It is rewritten at every
checkpoint through a temporary directory: the new state is complete before the old one goes
(``state.prev`` is kept during the swap and used if the swap itself was interrupted).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STATE_DIR = "state"


@dataclass(frozen=True)
class Progress:
    """Where a run stands: ``step`` optimizer steps done, ``position`` groups consumed."""

    step: int
    position: int
    elapsed_s: float
    log_rows: tuple[dict[str, Any], ...]
    settings: dict[str, Any]


def rng_states() -> dict[str, Any]:
    """All RNG states that training draws from (torch CPU/CUDA, Python, NumPy)."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def save_state(
    out_dir: Path,
    progress: Progress,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Write the state of a run atomically to ``out_dir/state``."""
    import torch
    from safetensors.torch import save_file

    final = out_dir / STATE_DIR
    tmp = out_dir / f".{STATE_DIR}.tmp-{os.getpid()}"
    prev = out_dir / f"{STATE_DIR}.prev"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in trainable.items()},
        str(tmp / "trainable.safetensors"),
    )
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states(),
        },
        tmp / "optimizer.pt",
    )
    meta = {
        "step": progress.step,
        "position": progress.position,
        "elapsed_s": progress.elapsed_s,
        "log_rows": list(progress.log_rows),
        "settings": progress.settings,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(prev, ignore_errors=True)
    if final.exists():
        os.replace(final, prev)
    os.replace(tmp, final)
    shutil.rmtree(prev, ignore_errors=True)


def state_dir(out_dir: Path) -> Path | None:
    """The saved state of a run in ``out_dir``, if any."""
    for name in (STATE_DIR, f"{STATE_DIR}.prev"):
        path = out_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def load_progress(path: Path) -> Progress:
    meta = json.loads((path / "state.json").read_text())
    return Progress(
        step=meta["step"],
        position=meta["position"],
        elapsed_s=meta["elapsed_s"],
        log_rows=tuple(meta["log_rows"]),
        settings=meta["settings"],
    )


def restore_state(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Load tensors, optimizer, scheduler and RNG states saved in ``path`` in place."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    if set(saved) != set(trainable):
        raise ValueError(f"{path}: saved trainable tensors do not match the model's")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name].to(param.device))
    blob = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_states(blob["rng"])
