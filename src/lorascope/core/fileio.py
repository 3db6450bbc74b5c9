"""Atomic file and folder writes, and file hashes: the one place every stage gets them from.

Outputs appear whole or not at all: each is written beside its final path under a temporary
name and renamed into place, so a killed job never leaves a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_header(file: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    """``(header length, header)`` of a safetensors file, read without loading tensors: the
    header maps tensor names to ``{dtype, shape, data_offsets}`` (and ``__metadata__``).

    Raises:
        ValueError: naming the file - truncated, not safetensors, or an unreadable header.
    """
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{file}: truncated safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100_000_000):
                raise ValueError(f"{file}: not a safetensors file (header of {length} bytes "
                                 f"in a {size}-byte file)")
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: unreadable safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{file}: unreadable safetensors header (not a JSON object)")
    return length, header


def tmp_sibling(path: str | os.PathLike[str]) -> Path:
    """A temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write a JSON file atomically (sorted keys, indented). NaN and infinities are refused
    (they are not JSON): a ValueError naming the file instead of a bare ``NaN``."""
    try:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{path}: a value to write is not a finite number ({err}); "
                         "refusing to write NaN or infinity into JSON") from err
    write_text(path, text + "\n")


@contextmanager
def atomic_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``out_dir`` when the block succeeds.

    On an exception the temporary folder is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
