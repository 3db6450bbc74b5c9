"""The ``anatomy`` stage: every checkpoint of one run, every LoRA module, one table.

Reads extracted adapters only (no model is loaded); the maths is :mod:`.maths`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.anatomy.maths import AnatomyError, adapter_anatomy
from lorascope.core import provenance
from lorascope.core.contracts import write_rows

log = logging.getLogger(__name__)

STAGE = "anatomy"


def anatomy(
    params: Mapping[str, Any],
    adapter_dirs_by_step: Mapping[int, str | Path],
    out_parquet: str | Path,
    *,
    base_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``anatomy`` stage: every checkpoint of one (model, adapter) into one ANATOMY table.

    Reads each ``adapter_dirs_by_step[step]`` (an extracted adapter) and, for DoRA adapters,
    the base weights in ``base_dir`` when given; writes ``out_parquet`` (ANATOMY contract, one
    row per step and LoRA module, provenance inside).

    Args:
        params: ``{model, adapter}`` (identifying fields copied into every row), optionally
            ``model_type``.
        adapter_dirs_by_step: checkpoint step -> extracted adapter directory.
        out_parquet: the table to write.
        base_dir: the base model directory (DoRA's magnitude shift only).
        progress: show a tqdm bar over the checkpoints.

    Returns:
        ``{rows, steps, modules, fro_total: {step: √Σ‖ΔW‖_F²}}``.
    """
    from tqdm.auto import tqdm

    for key in ("model", "adapter"):
        if not isinstance(params.get(key), str):
            raise AnatomyError(f"anatomy params: '{key}' must be a string, got "
                               f"{params.get(key)!r}")
    if not adapter_dirs_by_step:
        raise AnatomyError("anatomy: no adapter checkpoints given")
    rows: list[dict[str, Any]] = []
    totals: dict[int, float] = {}
    modules = 0
    for step in tqdm(sorted(adapter_dirs_by_step), desc="anatomy", unit="checkpoint",
                     disable=not progress):
        found = adapter_anatomy(adapter_dirs_by_step[step], model_type=params.get("model_type"),
                                base_dir=base_dir)
        modules = max(modules, len(found))
        totals[int(step)] = math.sqrt(sum(m.fro**2 for m in found))
        for m in found:
            rows.append({"model": params["model"], "adapter": params["adapter"],
                         "step": int(step), **asdict(m), "sigma": list(m.sigma)})
    record = provenance.record(STAGE, params, base_dir=str(base_dir) if base_dir else None,
                               adapter_dirs={str(k): str(v)
                                             for k, v in sorted(adapter_dirs_by_step.items())})
    write_rows(out_parquet, ANATOMY, rows, record)
    log.info("anatomy of %s %s: %d checkpoints x %d LoRA modules -> %s", params["model"],
             params["adapter"], len(adapter_dirs_by_step), modules, out_parquet)
    return {"rows": len(rows), "steps": sorted(totals), "modules": modules,
            "fro_total": totals}
