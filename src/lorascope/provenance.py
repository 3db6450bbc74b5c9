"""Provenance recorded with every artifact: config slice and hash, versions, seed, machine."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from lorascope.config import config_hash

TRACKED_PACKAGES = (
    "lorascope",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "ir_datasets",
    "ir-measures",
    "pyarrow",
    "numpy",
    "scipy",
    "snakemake",
)


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (missing ones left out)."""
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        version = package_version(name)
        if version is not None:
            found[name] = version
    return found


def git_commit(path: str | os.PathLike[str] = ".") -> str | None:
    """The commit of the workflow checkout (with '+dirty' for uncommitted changes), if any."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def hardware() -> dict[str, Any]:
    """CPU count and, when torch is already imported, the accelerator in use."""
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record(stage: str, params: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The provenance block stored beside (or inside) an artifact of ``stage``."""
    return {
        "stage": stage,
        "params": params,
        "params_hash": config_hash(params),
        "versions": versions(),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
