"""The boundary-layer table: per model, adapter and test split, the boundary ``b`` chosen on
the selection split, the share of LoRA parameters the pruned adapter drops, the full and the
pruned adapter's metrics with the paired test, and the unmerged scoring speed-up.

Reads ``boundary.parquet`` (one row per comparison: b, parameters, timing) and the
``boundary_pruned`` rows of ``evaluations.parquet`` (ablations ``full`` and ``pruned``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lorascope.report.data import FULL, ReportInputs
from lorascope.report.model import (
    MECHANICS_NOTE,
    SIGNIFICANCE_NOTE,
    Cell,
    Column,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import main_measure, measure_pairs, sort_splits
from lorascope.report.tables import display_models, split_label

KEY = "table-boundary"
PRUNED_SWEEP = "boundary_pruned"
PRUNED = "pruned"


def _value(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row or pd.isna(row[column]):
        return None
    return float(row[column])


def boundary_table(params: Mapping[str, Any], inputs: ReportInputs) -> Table | Omitted:
    """The table (key ``table-boundary``), or a one-line note when no comparison ran.

    ``params["boundary"]["measures"]`` (optional, ``[[label, measure], ...]``) lists the
    metrics compared; by default the measure b was chosen by."""
    data = inputs.boundary
    if data.empty:
        return Omitted(KEY, "Boundary-layer table not produced: "
                       f"{inputs.missing_note('boundary', 'boundary')}.")
    cfg = params.get("boundary") or {}
    chosen_by = sorted({str(m) for m in data["measure"].dropna()})
    measures = measure_pairs(cfg.get("measures")) or [
        (m, m) for m in (chosen_by or [main_measure(params)])
    ]
    ev = inputs.evaluations
    ev = ev[ev["sweep"] == PRUNED_SWEEP]
    index = {(r["model"], r["adapter"], int(r["step"]), r["split"], r["ablation"], r["measure"]):
             r for _, r in ev.iterrows()}

    columns = [
        Column("", "Run", "adapter", "", fmt="text"),
        Column("", "Run", "step", "", fmt="int"),
        Column("", "Run", "test split", "", fmt="text"),
        Column("", "Boundary", "b", "", fmt="text"),
        Column("", "Boundary", "LoRA params removed", "", fmt="percent"),
    ]
    for label, measure in measures:
        columns += [
            Column("", label, "full", measure),
            Column("", label, "pruned", measure),
            Column("", label, "Δ", measure, fmt="delta"),
            Column("", label, "p (adj.)", measure, fmt="p"),
        ]
    columns.append(Column("", "Unmerged scoring", "speed-up", "", fmt="ratio"))

    order = display_models(params, inputs)
    models = [m for m in order if m in set(data["model"])]
    rows: list[Row] = []
    notes: list[str] = []
    missing_metrics: list[str] = []
    selections: list[str] = []
    for model in models:
        mdata = data[data["model"] == model]
        label = inputs.model_label(model)
        for adapter in sorted(set(mdata["adapter"])):
            adata = mdata[mdata["adapter"] == adapter]
            first = adata.iloc[0]
            selections.append(
                f"{label} `{adapter}`: b = {int(first['b'])} chosen on "
                f"`{first['selection_split'] or '?'}` by {first['measure'] or '?'}"
                + (f" ({float(first['selection_value']):.4f})"
                   if not pd.isna(first["selection_value"]) else "")
            )
            for split in sort_splits(adata["split"], params):
                rec = adata[adata["split"] == split].iloc[0]
                step = int(rec["step"])
                cells = [
                    Cell(label=adapter),
                    Cell(float(step)),
                    Cell(label=split_label(split)),
                    Cell(float(rec["b"]), label=f"{int(rec['b'])} of {int(rec['num_layers'])}",
                         extra={"num_layers": int(rec["num_layers"])}),
                    Cell(_value(rec, "params_removed_fraction"),
                         extra={"lora_params_full": _value(rec, "lora_params_full"),
                                "lora_params_pruned": _value(rec, "lora_params_pruned")}),
                ]
                found_any = False
                for _, measure in measures:
                    full = index.get((model, adapter, step, split, FULL, measure))
                    pruned = index.get((model, adapter, step, split, PRUNED, measure))
                    found_any = found_any or pruned is not None
                    sig = bool(pruned["significant"]) if pruned is not None else False
                    extra = {"p_value": _value(pruned, "p_value"),
                             "queries": _value(pruned, "queries")}
                    cells += [
                        Cell(_value(full, "value")),
                        Cell(_value(pruned, "value")),
                        Cell(_value(pruned, "delta"), significant=sig, extra=extra),
                        Cell(_value(pruned, "p_adjusted")),
                    ]
                if not found_any:
                    missing_metrics.append(f"{label} `{adapter}` on `{split}`")
                cells.append(Cell(
                    _value(rec, "speedup"),
                    extra={"pairs_per_second_full": _value(rec, "pairs_per_second_full"),
                           "pairs_per_second_pruned": _value(rec, "pairs_per_second_pruned")},
                ))
                rows.append(Row(f"{model}/{adapter}/{split}", label, cells,
                                mechanics_only=inputs.mechanics_only(model)))
    notes.append("Selection: " + "; ".join(selections) + " (the best value on the selection "
                 "split, ties to the smallest b; `lorascope.boundary.select_boundary`).")
    notes.append("b: LoRA kept in layers 0..b of the model's L layers (b of L); Δ = pruned − "
                 "full on the same queries, p from the paired per-query test, adjusted for "
                 "multiple comparisons; speed-up = full / pruned scoring time of the same "
                 "batches with both adapters loaded unmerged (best of the timed passes).")
    if missing_metrics:
        notes.append(f"No `{PRUNED_SWEEP}` evaluation rows for " + ", ".join(missing_metrics)
                     + ": metrics left blank.")
    if any(inputs.mechanics_only(m) for m in models):
        notes.append(MECHANICS_NOTE)
    if any(c.significant for r in rows for c in r.cells):
        notes.append(SIGNIFICANCE_NOTE.replace("full adapter of the same run",
                                               "full adapter on the same split"))
    else:
        notes.append("No pruned-vs-full change is significant.")
    measure_names = " / ".join(label for label, _ in measures)
    return Table(
        key=KEY,
        number=None,
        title="Boundary-layer pruning: pruned vs full adapter",
        split="",
        caption=(
            "The adapter pruned to LoRA in layers 0..b (b chosen on the selection split) "
            f"against the full adapter on each test split: {measure_names}, the paired test, "
            "the share of LoRA parameters removed and the unmerged scoring speed-up."
        ),
        row_header="Model",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('boundary')}`: b, parameters and timing per comparison",
            f"`{inputs.source_path('evaluations')}`: sweep `{PRUNED_SWEEP}`, ablations "
            f"`{FULL}` and `{PRUNED}`",
        ],
    )
