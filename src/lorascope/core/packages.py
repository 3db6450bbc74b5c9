"""Installed packages: where one lives (without importing it) and its version."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing (executing) it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
