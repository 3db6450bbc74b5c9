"""Does update size predict importance? A per-module anatomy quantity against the drops an
``each_layer_role`` sweep measured (Spearman's rank correlation)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.anatomy.maths import QUANTITIES, AnatomyError, Module
from lorascope.core.contracts import read_table
from lorascope.core.names import parse_layer_role_name

@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation of a per-module quantity with the ablation drops.

    ``drop = full - ablated`` (the negated ``delta`` of the summary), so a positive ``rho``
    means modules with larger updates hurt more when zeroed. ``rho`` and ``p_value`` are NaN
    when fewer than 3 modules pair up or either side is constant.
    """

    rho: float
    p_value: float
    n: int
    measure: str
    quantity: str


def drops_from_summary(summary: Mapping[str, Any], measure: str,
                       where: str = "summary") -> dict[Module, float]:
    """``{(layer, role): full - ablated}`` from an ``each_layer_role`` sweep's summary entries
    ``drop_layer_{i:02d}_{role}``.

    Raises:
        AnatomyError: naming ``where``, when there are no such entries or the measure is absent.
    """
    entries = summary.get("ablations")
    if not isinstance(entries, Mapping):
        raise AnatomyError(f"{where}: not an evaluate summary (no 'ablations' mapping)")
    drops: dict[Module, float] = {}
    for name, entry in entries.items():
        module = parse_layer_role_name(name)
        if module is None:
            continue
        delta = (entry.get("delta") or {}).get(measure)
        if delta is None:
            raise AnatomyError(f"{where}: ablation {name} has no delta for {measure!r} "
                               f"(measures: {sorted(entry.get('delta') or {})})")
        drops[module] = -float(delta)
    if not drops:
        raise AnatomyError(f"{where}: no drop_layer_<i>_<role> ablations; is this the summary "
                           "of a `generate: each_layer_role` sweep?")
    return drops


def correlate(values: Mapping[Module, float], drops: Mapping[Module, float], *,
              measure: str = "", quantity: str = "fro") -> Correlation:
    """Spearman's rho between ``values`` and ``drops`` over the modules present in both."""
    from scipy.stats import spearmanr

    common = sorted(set(values) & set(drops))
    x = [float(values[k]) for k in common]
    y = [float(drops[k]) for k in common]
    nan = float("nan")
    if len(common) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return Correlation(nan, nan, len(common), measure, quantity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(x, y)
    return Correlation(float(result.statistic), float(result.pvalue), len(common), measure,
                       quantity)


def correlate_with_sweep(
    anatomy_parquet: str | Path,
    summary_json: str | Path,
    *,
    measure: str = "nDCG@10",
    quantity: str = "fro",
) -> Correlation:
    """Correlate an ANATOMY table's ``quantity`` with the drops of an ``each_layer_role``
    sweep, matching the summary's model, adapter and step.

    Raises:
        AnatomyError: naming the files, when no anatomy row matches the summary's run.
    """
    if quantity not in QUANTITIES:
        raise AnatomyError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    summary = json.loads(Path(summary_json).read_text())
    drops = drops_from_summary(summary, measure, str(summary_json))
    table = read_table(anatomy_parquet, ANATOMY,
                       columns=["model", "adapter", "step", "layer", "role", quantity])
    run = {k: summary.get(k) for k in ("model", "adapter", "step")}
    values: dict[Module, float] = {}
    runs = set()
    for row in table.to_pylist():
        if all(run[k] is None or row[k] == run[k] for k in run):
            values[(row["layer"], row["role"])] = row[quantity]
            runs.add((row["model"], row["adapter"], row["step"]))
    if not values:
        raise AnatomyError(f"{anatomy_parquet}: no rows for model {run['model']!r}, adapter "
                           f"{run['adapter']!r}, step {run['step']!r} of {summary_json}")
    if len(runs) > 1:
        raise AnatomyError(f"{anatomy_parquet}: {len(runs)} checkpoints match {summary_json} "
                           f"(it names model {run['model']!r}, adapter {run['adapter']!r}, "
                           f"step {run['step']!r}); the summary must identify one")
    return correlate(values, drops, measure=measure, quantity=quantity)
