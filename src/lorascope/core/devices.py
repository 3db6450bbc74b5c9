"""GPU device choice for one job, made before torch is imported.

Snakemake's local executor limits how many GPU jobs run at once (``--resources gpu=N``) but
does not say *which* device each job should use: every job would see every GPU and take
``cuda:0``. :func:`claim` gives the job its own devices instead:

* A job that declares no GPU (``n == 0``) sees none: ``CUDA_VISIBLE_DEVICES`` is set to
  ``""`` unless something already set it.
* Under a scheduler that assigns devices (SLURM sets ``CUDA_VISIBLE_DEVICES`` for
  ``--gpus``/``--gres`` and confines the job to them), or when ``CUDA_VISIBLE_DEVICES``
  already names exactly ``n`` devices, the environment is kept as it is.
* Otherwise the job picks ``n`` free devices from the machine's pool by taking an exclusive
  ``fcntl.flock`` on one lock file per device, sets ``CUDA_VISIBLE_DEVICES`` to them and keeps
  the locks for the rest of the process: the kernel releases them when the process ends,
  however it ends.

The pool is ``LORASCOPE_GPU_SLOTS`` when set (a count, ``"4"``, or device ids, ``"0,2,3"``),
else the devices ``CUDA_VISIBLE_DEVICES`` lists, else the NVIDIA GPUs the driver reports
(``/proc/driver/nvidia/gpus``). Lock files live in ``LORASCOPE_GPU_LOCK_DIR``, by default a
per-user folder under ``$XDG_RUNTIME_DIR`` (or the system temporary folder), so concurrent
jobs of any study run by the same user share them.

Only the standard library is used here: importing torch first would fix the device list.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

VISIBLE = "CUDA_VISIBLE_DEVICES"
SLOTS_ENV = "LORASCOPE_GPU_SLOTS"
LOCK_DIR_ENV = "LORASCOPE_GPU_LOCK_DIR"
#: Environment variables that mean "a batch scheduler placed this process".
SCHEDULER_ENV = ("SLURM_JOB_ID",)
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")

# Lock files held by this process: kept referenced so they stay open (and locked) until exit.
_HELD: list[IO[str]] = []


@dataclass(frozen=True)
class DeviceClaim:
    """The devices one job was given.

    Attributes:
        devices: device ids as ``CUDA_VISIBLE_DEVICES`` names them (empty: no GPU).
        source: ``"scheduler"`` (kept as the scheduler set it), ``"environment"`` (kept as the
            caller set it), ``"lock"`` (chosen here under a lock), ``"none"`` (no GPU asked
            for, or none found).
        lock_paths: the lock files held while ``source == "lock"``.
    """

    devices: tuple[str, ...]
    source: str
    lock_paths: tuple[Path, ...] = ()
    _handles: tuple[IO[str], ...] = field(default=(), repr=False, compare=False)

    def release(self) -> None:
        """Give the devices back before the process ends (the CLI never needs this)."""
        for handle in self._handles:
            if handle in _HELD:
                _HELD.remove(handle)
            handle.close()


def default_lock_dir(env: MutableMapping[str, str] | None = None) -> Path:
    """``LORASCOPE_GPU_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/lorascope-gpu-locks``, else
    ``<tmp>/lorascope-gpu-locks-<uid>``."""
    env = os.environ if env is None else env
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "lorascope-gpu-locks"
    return Path(tempfile.gettempdir()) / f"lorascope-gpu-locks-{os.getuid()}"


def parse_device_list(text: str, *, source: str) -> list[str]:
    """Device ids from a ``CUDA_VISIBLE_DEVICES``-style list, or ``range(N)`` from a count.

    ``source`` names where ``text`` came from, for the error message.
    """
    text = text.strip()
    if not text:
        return []
    if source == SLOTS_ENV and text.isdigit():
        return [str(i) for i in range(int(text))]
    ids = [part.strip() for part in text.split(",")]
    if any(not part or not re.fullmatch(r"[A-Za-z0-9_.:/-]+", part) for part in ids):
        raise ValueError(f"{source}={text!r}: expected device ids separated by commas (e.g. 0,1)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}={text!r}: a device is listed twice")
    return ids


def detect_devices(proc_dir: Path = NVIDIA_PROC) -> list[str]:
    """Ids ``0..N-1`` of the NVIDIA GPUs the driver reports (no torch, no CUDA context)."""
    try:
        count = sum(1 for _ in proc_dir.iterdir())
    except OSError:
        return []
    return [str(i) for i in range(count)]


def device_pool(env: MutableMapping[str, str] | None = None) -> tuple[list[str], str]:
    """The devices jobs on this machine share, and where that list came from."""
    env = os.environ if env is None else env
    if env.get(SLOTS_ENV, "").strip():
        return parse_device_list(env[SLOTS_ENV], source=SLOTS_ENV), SLOTS_ENV
    if VISIBLE in env:
        return parse_device_list(env[VISIBLE], source=VISIBLE), VISIBLE
    return detect_devices(), str(NVIDIA_PROC)


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "a+")  # noqa: SIM115 - kept open for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _lock_free(pool: Sequence[str], n: int, lock_dir: Path) -> list[tuple[str, IO[str]]]:
    """Lock the first ``n`` free devices of ``pool``, or none at all (no hold-and-wait)."""
    taken: list[tuple[str, IO[str]]] = []
    for device in pool:
        handle = _try_lock(lock_dir / _lock_name(device))
        if handle is not None:
            taken.append((device, handle))
            if len(taken) == n:
                return taken
    for _, handle in taken:
        handle.close()
    return []


def claim(
    n: int,
    *,
    env: MutableMapping[str, str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    poll_seconds: float = 1.0,
) -> DeviceClaim:
    """Give this process ``n`` GPUs: set ``CUDA_VISIBLE_DEVICES`` in ``env`` before torch loads.

    Args:
        n: GPUs the job declared (the rule's ``gpu`` resource).
        env: the environment to read and update (default ``os.environ``).
        lock_dir: where the per-device lock files live (default :func:`default_lock_dir`).
        timeout: seconds to wait for free devices (default: wait as long as it takes, logging
            every minute); then ``TimeoutError``.
        poll_seconds: how often to look for a free device while waiting.

    Returns:
        The :class:`DeviceClaim`; its locks stay held until the process exits.

    Raises:
        ValueError: ``n`` is negative, more than the pool holds, or an environment variable
            is malformed (the message names it).
        TimeoutError: no ``n`` devices were free within ``timeout``.
    """
    env = os.environ if env is None else env
    if n < 0:
        raise ValueError(f"--gpus {n}: the number of GPUs cannot be negative")
    if n == 0:
        env.setdefault(VISIBLE, "")
        return DeviceClaim(devices=(), source="none")

    if any(env.get(var) for var in SCHEDULER_ENV):
        devices = tuple(parse_device_list(env.get(VISIBLE, ""), source=VISIBLE))
        log.info("GPU: %s=%r as the scheduler set it", VISIBLE, env.get(VISIBLE))
        return DeviceClaim(devices=devices, source="scheduler")
    if VISIBLE in env and not env.get(SLOTS_ENV, "").strip():
        visible = parse_device_list(env[VISIBLE], source=VISIBLE)
        if len(visible) == n:
            log.info("GPU: %s=%r kept", VISIBLE, env[VISIBLE])
            return DeviceClaim(devices=tuple(visible), source="environment")

    pool, origin = device_pool(env)
    if not pool:
        log.info("GPU: none found (%s); running without one", origin)
        return DeviceClaim(devices=(), source="none")
    if n > len(pool):
        raise ValueError(
            f"--gpus {n}: only {len(pool)} GPU(s) available ({origin}: {','.join(pool)})"
        )

    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir(env)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    next_note = start + 60.0
    while True:
        taken = _lock_free(pool, n, directory)
        if taken:
            break
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise TimeoutError(
                f"no {n} free GPU(s) of {','.join(pool)} within {timeout:g} s (locks in {directory})"
            )
        if now >= next_note:
            log.info(
                "GPU: waiting for %d free device(s) of %s (locks in %s)",
                n,
                ",".join(pool),
                directory,
            )
            next_note = now + 60.0
        time.sleep(poll_seconds)

    devices = tuple(device for device, _ in taken)
    handles = tuple(handle for _, handle in taken)
    _HELD.extend(handles)
    env[VISIBLE] = ",".join(devices)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # ids as nvidia-smi numbers them
    log.info("GPU: %s=%s (locked in %s)", VISIBLE, env[VISIBLE], directory)
    return DeviceClaim(
        devices=devices,
        source="lock",
        lock_paths=tuple(directory / _lock_name(d) for d in devices),
        _handles=handles,
    )
