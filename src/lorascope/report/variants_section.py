"""The LoRA variants table: the study's results grouped by variant (plain LoRA, DoRA, rsLoRA,
PiSSA, OLoRA, EVA and their combinations). For each model and (rank, targets) trained with more
than plain LoRA, one row per variant: the last checkpoint's metrics on the main split, the
convergence step, and the component-ablation drops where the components sweep (Table 3's) was
run for that variant's adapter.

Reads ``evaluations.parquet`` (``variant`` column; ``checkpoints`` and Table 3's sweeps),
``convergence.parquet`` and study.json's ``adapters``. Params: Table 1's ``measures``, Table
3's ``sweep(s)`` and ``rows`` (their labels), Table 2's ``measure`` (the drops' measure).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lorascope.core.names import CHECKPOINTS, FULL
from lorascope.report.data import ReportInputs
from lorascope.report.model import (
    MECHANICS_NOTE,
    SIGNIFICANCE_NOTE,
    Cell,
    Column,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import (
    AdapterSpec,
    main_measure,
    measure_pairs,
    model_adapters,
    variant_label,
)
from lorascope.report.tables import display_models, split_label

KEY = "table-variants"
COMPONENTS = "components"


def _value(row: pd.Series | None, column: str = "value") -> float | None:
    if row is None or pd.isna(row[column]):
        return None
    return float(row[column])


def _groups(inputs: ReportInputs, params: Mapping[str, Any], split: str
            ) -> list[tuple[str, list[AdapterSpec]]]:
    """Per model, each (targets, rank) with a non-plain variant: its adapters, plain first."""
    ev = inputs.evaluations
    curves = ev[(ev["sweep"] == CHECKPOINTS) & (ev["ablation"] == FULL) & (ev["split"] == split)]
    out = []
    for model in display_models(params, inputs):
        names = set(curves.loc[curves["model"] == model, "adapter"])
        if not names:
            continue
        by_run: dict[tuple[str, int], list[AdapterSpec]] = {}
        for spec in model_adapters(inputs, model, names):
            by_run.setdefault(spec.run_key, []).append(spec)
        for key in sorted(by_run):
            specs = by_run[key]
            if any(not s.plain for s in specs):
                out.append((model, sorted(specs, key=lambda s: (not s.plain, s.variant))))
    return out


def variants_table(params: Mapping[str, Any], inputs: ReportInputs) -> Table | Omitted:
    """The table (key ``table-variants``), or a one-line note for a plain-LoRA-only study."""
    split = str(params.get("main_split") or "")
    groups = _groups(inputs, params, split)
    if not groups:
        return Omitted(KEY, "LoRA variants: this study trains plain LoRA only (no adapter sets "
                       "`variant`: dora, rslora, pissa, olora or eva), so there is nothing to "
                       "group by variant.")
    measures = measure_pairs((params.get("table1") or {}).get("measures")) or [
        (main_measure(params),) * 2]
    drop_measure = main_measure(params)
    t3 = params.get("table3") or {}
    sweeps = [str(s) for s in (t3.get("sweeps") or ([t3["sweep"]] if t3.get("sweep")
                                                     else [COMPONENTS]))]
    ablations = [(a, label) for a, label in measure_pairs(t3.get("rows")) if a != FULL]
    ev = inputs.evaluations
    if not ablations:
        names = sorted(set(ev.loc[ev["sweep"].isin(sweeps), "ablation"]) - {FULL})
        ablations = [(a, a) for a in names]
    curves = ev[(ev["sweep"] == CHECKPOINTS) & (ev["ablation"] == FULL) & (ev["split"] == split)]
    drops = ev[ev["sweep"].isin(sweeps) & (ev["split"] == split)
               & (ev["measure"] == drop_measure)]
    conv = inputs.convergence

    columns = [Column("", "Run", "adapter", "", fmt="text"),
               Column("", "Run", "variant", "", fmt="text")]
    columns += [Column("", f"Last checkpoint ({split_label(split)})", label, measure)
                for label, measure in measures]
    columns.append(Column("", "Convergence", "step", "", fmt="int"))
    drop_group = f"Component ablation: Δ {drop_measure}"
    columns += [Column("", drop_group, label, drop_measure, fmt="delta")
                for _, label in ablations]

    rows: list[Row] = []
    no_drops: list[str] = []
    for model, specs in groups:
        label = inputs.model_label(model)
        for spec in specs:
            run = curves[(curves["model"] == model) & (curves["adapter"] == spec.name)]
            last = int(run["step"].max())
            cells = [Cell(label=spec.name), Cell(label=variant_label(spec.variant))]
            for _, measure in measures:
                hit = run[(run["step"] == last) & (run["measure"] == measure)]
                cells.append(Cell(_value(hit.iloc[0]) if not hit.empty else None, step=last))
            crow = conv[(conv["model"] == model) & (conv["adapter"] == spec.name)]
            step = (None if crow.empty or pd.isna(crow["convergence_step"].iloc[0])
                    else float(crow["convergence_step"].iloc[0]))
            cells.append(Cell(step))
            mine = drops[(drops["model"] == model) & (drops["adapter"] == spec.name)]
            if not mine.empty:
                mine = mine[mine["step"] == mine["step"].max()]
            else:
                no_drops.append(f"{label} `{spec.name}`")
            for ablation, _ in ablations:
                hit = mine[mine["ablation"] == ablation] if not mine.empty else mine
                row = hit.iloc[0] if not hit.empty else None
                cells.append(Cell(_value(row, "delta") if row is not None else None,
                                  significant=bool(row["significant"]) if row is not None
                                  else False,
                                  extra={"p_adjusted": _value(row, "p_adjusted")
                                         if row is not None else None,
                                         "step": int(row["step"]) if row is not None else None}))
            rows.append(Row(f"{model}/{spec.name}", label, cells,
                            mechanics_only=inputs.mechanics_only(model)))

    notes = [
        "One row per variant of the same model, rank and target modules. In parentheses: the "
        "last checkpoint step. Convergence step: Table 2's rule on the convergence split. Δ: "
        f"the change in {drop_measure} when the component's LoRA updates are zeroed, against "
        "the same adapter in full (the components sweep's checkpoint).",
    ]
    if no_drops:
        notes.append("No components sweep for " + ", ".join(no_drops) + ": Δ left blank.")
    if any(r.mechanics_only for r in rows):
        notes.append(MECHANICS_NOTE)
    if any(c.significant for r in rows for c in r.cells):
        notes.append(SIGNIFICANCE_NOTE)
    return Table(
        key=KEY,
        number=None,
        title=f"LoRA variants — {split_label(split)}",
        split=split,
        caption=("Results grouped by LoRA variant: the last checkpoint's metrics on "
                 f"{split_label(split)}, the convergence step and the component-ablation drops "
                 "of each variant's adapter."),
        row_header="Model",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('evaluations')}`: sweep `{CHECKPOINTS}` (last step, split "
            f"`{split}`) and " + ", ".join(f"`{s}`" for s in sweeps) + " (the drops)",
            f"`{inputs.source_path('convergence')}`: convergence step per adapter",
        ],
    )
