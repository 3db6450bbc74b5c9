"""Resumable training state: everything needed to continue a run bit for bit, bound to the
run it belongs to.

``out_dir/state/`` holds the trainable tensors, the optimizer and scheduler states, every RNG
state, the data position, the step, the loss log so far, and the run's *fingerprint*: the
settings, the base weights' sha256, the training data's content digest and the code version.
A state whose fingerprint is not the current run's is never resumed (the trainer starts
afresh). It is rewritten at every checkpoint through a temporary directory: the new state is
complete before the old one goes (``state.prev`` is kept during the swap and used if the
swap itself was interrupted).

Loading is safe: tensors come from safetensors, the optimizer/scheduler/RNG states through
``torch.load(weights_only=True)`` (a restricted unpickler that refuses code), the rest from
JSON. A file that does not load so is an error naming it, never executed.

:class:`WorkDirLock` makes a work directory one trainer's: an exclusive lock held for the whole
run, released by the kernel when the process dies.
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
#: The resume state and the previous one (kept while a new one is being written).
STATE_DIRS = (STATE_DIR, f"{STATE_DIR}.prev")


LOCK_FILE = ".lock"


class StateError(RuntimeError):
    """A saved training state that cannot be used; the message names the file."""


class WorkDirBusy(RuntimeError):
    """Another trainer holds the work directory."""


class WorkDirLock:
    """An exclusive, non-blocking ``flock`` on ``work_dir/.lock`` for the whole run.

    The lock file is opened without following a symlink and never truncated before the lock is
    held; it then records the holder's pid. The kernel releases the lock when the holder dies,
    however it dies, so a killed trainer never blocks the next one.
    """

    def __init__(self, work_dir: str | Path) -> None:
        self.path = Path(work_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> WorkDirLock:
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as err:
            raise WorkDirBusy(f"{self.path}: cannot open the work directory's lock ({err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkDirBusy(
                f"{self.path.parent} is in use by another trainer (pid {holder}); one trainer "
                "per work directory: wait for it to end, or kill it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


@dataclass(frozen=True)
class Progress:
    """Where a run stands: ``step`` optimizer steps done, ``position`` groups consumed, and the
    fingerprint of the run (:func:`lorascope.training.loop.fingerprint`)."""

    step: int
    position: int
    elapsed_s: float
    log_rows: tuple[dict[str, Any], ...]
    fingerprint: dict[str, Any]


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
        "fingerprint": progress.fingerprint,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(prev, ignore_errors=True)
    if final.exists():
        os.replace(final, prev)
    os.replace(tmp, final)
    shutil.rmtree(prev, ignore_errors=True)


def state_dir(out_dir: Path) -> Path | None:
    """The saved state of a run in ``out_dir``, if any."""
    for name in STATE_DIRS:
        path = out_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def load_progress(path: Path) -> Progress:
    """The progress saved in ``path``; a state of another format (an older lorascope's, without
    a fingerprint) has the empty fingerprint, which matches no run."""
    file = path / "state.json"
    try:
        meta = json.loads(file.read_text())
        return Progress(
            step=int(meta["step"]),
            position=int(meta["position"]),
            elapsed_s=float(meta["elapsed_s"]),
            log_rows=tuple(meta["log_rows"]),
            fingerprint=dict(meta.get("fingerprint") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StateError(f"{file}: not a training state ({err})") from err


def restore_state(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Load tensors, optimizer, scheduler and RNG states saved in ``path`` in place."""
    import torch
    from safetensors.torch import load_file

    tensors = path / "trainable.safetensors"
    try:
        saved = load_file(str(tensors))
    except Exception as err:  # safetensors raises its own error types
        raise StateError(f"{tensors}: not a readable safetensors file ({err})") from err
    if set(saved) != set(trainable):
        raise StateError(f"{tensors}: saved trainable tensors do not match the model's")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name].to(param.device))
    states = path / "optimizer.pt"
    try:
        blob = torch.load(states, weights_only=True)
    except Exception as err:  # UnpicklingError for anything but tensors and plain data
        raise StateError(f"{states}: cannot be loaded safely (weights_only): {err}") from err
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_states(blob["rng"])
