"""GPU device choice for one job, made before torch is imported.

Snakemake's local executor limits how many GPU jobs run at once (``--resources gpu=N``) but
does not say *which* device each job should use: every job would see every GPU and take
``cuda:0``. :func:`claim` gives the job its own devices instead:

* A job that declares no GPU (``n == 0``) sees none: ``CUDA_VISIBLE_DEVICES`` is set to
  ``""`` unless something already set it.
* Under a scheduler that assigns devices (SLURM sets ``CUDA_VISIBLE_DEVICES`` for
  ``--gpus``/``--gres`` and confines the job to them), or when ``CUDA_VISIBLE_DEVICES``
  already names exactly ``n`` devices, those devices are used - and still locked: two jobs
  told to use the same device wait for each other instead of sharing it. (Under SLURM the
  lock names the physical devices, ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``.)
* Otherwise the job picks ``n`` free devices from the machine's pool, sets
  ``CUDA_VISIBLE_DEVICES`` to them.

A device is taken with an exclusive ``fcntl.flock`` on its lock file, kept for the rest of the
process: the kernel releases it when the process ends, however it ends. Waiting for a device
ends after ``LORASCOPE_GPU_TIMEOUT`` seconds when that is set, with an error naming the devices
and the pids holding them.

The lock directory is private: created with mode 0700, refused when it is not a directory
owned by this user or is writable by others; lock files are opened without following
symlinks, must be regular files owned by this user, and are written only once locked.

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
TIMEOUT_ENV = "LORASCOPE_GPU_TIMEOUT"
#: Where SLURM names the physical GPUs of a job (CUDA_VISIBLE_DEVICES is relative there).
SLURM_GPUS_ENV = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
#: Environment variables that mean "a batch scheduler placed this process".
SCHEDULER_ENV = ("SLURM_JOB_ID",)
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")

# Lock files held by this process: kept referenced so they stay open (and locked) until exit.
_HELD: list[IO[str]] = []


class LockDirError(RuntimeError):
    """The lock directory or a lock file is not private to this user."""


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


def private_dir(directory: Path) -> Path:
    """Create ``directory`` (mode 0700) or check an existing one: a real directory, owned by
    this user, writable by no one else. :class:`LockDirError` otherwise."""
    import stat

    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as err:
        raise LockDirError(f"{directory}: cannot create the GPU lock directory ({err})") from err
    if not stat.S_ISDIR(info.st_mode):
        raise LockDirError(f"{directory}: the GPU lock directory is not a directory (a link?)")
    if info.st_uid != os.getuid():
        raise LockDirError(f"{directory}: the GPU lock directory belongs to uid {info.st_uid}, "
                           f"not to this user ({os.getuid()}); set {LOCK_DIR_ENV}")
    if info.st_mode & 0o022:
        raise LockDirError(f"{directory}: the GPU lock directory is writable by others "
                           f"(mode {oct(info.st_mode & 0o777)}); chmod 700 it or set "
                           f"{LOCK_DIR_ENV}")
    return directory


def _try_lock(path: Path) -> IO[str] | None:
    """Lock ``path`` (created if absent); None when another process holds it."""
    import stat

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        raise LockDirError(f"{path}: cannot open the lock file without following links "
                           f"({err})") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise LockDirError(f"{path}: not a regular file owned by this user")
    handle = os.fdopen(fd, "r+")  # noqa: SIM115 - kept open for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    os.ftruncate(fd, 0)  # ours now: record the holder
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return handle


def _holder(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return "?"
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)


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
        timeout: seconds to wait for free devices (default: ``LORASCOPE_GPU_TIMEOUT``, else as
            long as it takes, logging every minute); then ``TimeoutError``.
        poll_seconds: how often to look for a free device while waiting.

    Returns:
        The :class:`DeviceClaim`; its locks stay held until the process exits.

    Raises:
        ValueError: ``n`` is negative, more than the pool holds, or an environment variable
            is malformed (the message names it).
        TimeoutError: no ``n`` devices were free within ``timeout``.
        LockDirError: the lock directory or a lock file is not private to this user.
    """
    env = os.environ if env is None else env
    if n < 0:
        raise ValueError(f"--gpus {n}: the number of GPUs cannot be negative")
    if n == 0:
        env.setdefault(VISIBLE, "")
        return DeviceClaim(devices=(), source="none")
    if timeout is None and env.get(TIMEOUT_ENV, "").strip():
        try:
            timeout = float(env[TIMEOUT_ENV])
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={env[TIMEOUT_ENV]!r}: expected seconds") from None

    source = None
    if any(env.get(var) for var in SCHEDULER_ENV):
        source, visible = "scheduler", parse_device_list(env.get(VISIBLE, ""), source=VISIBLE)
        physical = next((env[v] for v in SLURM_GPUS_ENV if env.get(v, "").strip()), None)
        pool = parse_device_list(physical, source="SLURM gpus") if physical else visible
        n = len(pool)
    elif VISIBLE in env and not env.get(SLOTS_ENV, "").strip():
        visible = parse_device_list(env[VISIBLE], source=VISIBLE)
        if len(visible) == n:
            source, pool = "environment", visible
    if source is None:
        pool, origin = device_pool(env)
        if not pool:
            log.info("GPU: none found (%s); running without one", origin)
            return DeviceClaim(devices=(), source="none")
        if n > len(pool):
            raise ValueError(
                f"--gpus {n}: only {len(pool)} GPU(s) available ({origin}: {','.join(pool)})"
            )
    if not pool:
        return DeviceClaim(devices=(), source=source or "none")

    directory = private_dir(Path(lock_dir) if lock_dir is not None else default_lock_dir(env))
    start = time.monotonic()
    next_note = start + 60.0
    while True:
        taken = _lock_free(pool, n, directory)
        if taken:
            break
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            holders = ", ".join(f"{d} (pid {_holder(directory / _lock_name(d))})" for d in pool)
            raise TimeoutError(
                f"no {n} free GPU(s) of {','.join(pool)} within {timeout:g} s; held by: "
                f"{holders} (locks in {directory}; {TIMEOUT_ENV} sets the wait)"
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
    lock_paths = tuple(directory / _lock_name(d) for d in devices)
    if source is not None:  # used as given (relative ids under SLURM), locked all the same
        log.info("GPU: %s=%r as the %s set it (locked in %s)", VISIBLE, env.get(VISIBLE),
                 source, directory)
        return DeviceClaim(devices=tuple(visible), source=source, lock_paths=lock_paths,
                           _handles=handles)
    env[VISIBLE] = ",".join(devices)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # ids as nvidia-smi numbers them
    log.info("GPU: %s=%s (locked in %s)", VISIBLE, env[VISIBLE], directory)
    return DeviceClaim(devices=devices, source="lock", lock_paths=lock_paths, _handles=handles)
