"""Content digests of a study's results: are two runs the same, bit for bit, in what they
computed?

A file's sha256 is the wrong test for that: every Parquet artifact carries its provenance
(creation time, git commit, versions) in its schema metadata, and summaries record timings.
:func:`content_digests` hashes what a run computed instead:

* every Parquet table under the results folder: its data (the Arrow schema without metadata,
  and every column's values), independent of row-group layout and of the provenance, without
  the columns that hold wall-clock measurements (:data:`TIMING_COLUMNS`: the boundary
  comparison's pairs/s and speed-up);
* every adapter (extracted, pruned, SVD-compressed; any folder with
  ``adapter_model.safetensors``): the bytes of its weights and of its ``adapter_config.json``;
* every exported TREC run (``*.run``): its bytes (scores, ranks, tags; no timings).

JSON summaries, logs and benchmark files are left out (they hold timings and paths). Two runs
with equal digests computed the same scores, metrics, tables and adapters, bitwise.

``lorascope digest results/<study> [--out FILE] [--against FILE]`` writes the digests as JSON
and, with ``--against``, lists every artifact that differs from (or is missing in) an earlier
run's digests, exiting 1 when any does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from lorascope.core.adapters import ADAPTER_FILES
from lorascope.core.contracts import content_digest
from lorascope.core.trec import RUN_SUFFIX

#: Folders under results/<study>/ that hold no results (logs, timings, resumable state).
SKIPPED = ("logs", "benchmarks", "work")
#: Table columns that measure time, not results: they differ between any two runs.
TIMING_COLUMNS = frozenset({"pairs_per_second_full", "pairs_per_second_pruned", "speedup",
                            "seconds", "pairs_per_s", "elapsed_s"})


def table_digest(path: str | Path) -> str:
    """sha256 of a Parquet table's data: its schema without metadata and its values (timing
    columns left out)."""
    return content_digest(path, skip_columns=TIMING_COLUMNS)


def content_digests(results_dir: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every table, adapter file and TREC run under
    ``results_dir``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results folder")
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in SKIPPED:
            continue
        if path.suffix == ".parquet":
            out[rel.as_posix()] = table_digest(path)
        elif path.suffix == RUN_SUFFIX or (
                path.name in ADAPTER_FILES and (path.parent / ADAPTER_FILES[0]).is_file()):
            out[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def differences(now: Mapping[str, str], before: Mapping[str, str]) -> dict[str, list[str]]:
    """The artifacts that ``changed``, are ``missing`` now, or are ``new``."""
    return {
        "changed": sorted(k for k in now.keys() & before.keys() if now[k] != before[k]),
        "missing": sorted(before.keys() - now.keys()),
        "new": sorted(now.keys() - before.keys()),
    }


def main(results_dir: str, out: str | None, against: str | None) -> int:
    """The ``digest`` subcommand: write the digests; compare them with ``against``."""
    import sys

    digests = content_digests(results_dir)
    text = json.dumps(digests, indent=1, sort_keys=True) + "\n"
    if out:
        Path(out).write_text(text)
    elif not against:
        sys.stdout.write(text)
    if not against:
        return 0
    before = json.loads(Path(against).read_text())
    diff = differences(digests, before)
    same = len(digests.keys() & before.keys()) - len(diff["changed"])
    sys.stdout.write(f"{same} of {len(before)} artifacts of {against} identical in {results_dir}\n")
    for kind, items in diff.items():
        for item in items:
            sys.stdout.write(f"{kind}: {item}\n")
    return 1 if any(diff.values()) else 0
