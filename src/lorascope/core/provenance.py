"""Provenance recorded with every artifact: config slice and hash, versions, seed, machine."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from typing import Any

from lorascope.core.packages import package_version

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


def config_hash(value: Any) -> str:
    """A short, stable hash of any JSON-serialisable config (slice)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    """The CPU (model, count, native bf16 flags) and, when torch is already imported, the
    accelerator in use."""
    from lorascope.core.precision import cpu_info

    cpu = cpu_info()
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                            "cpu": cpu["model"], "cpu_bf16": cpu["bf16_flags"]}
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
