"""The post-hoc rank compression table, beside Table 2: adapters trained at each rank (last
checkpoint) next to a trained adapter compressed after training to lower ranks by truncating
the SVD of every module's ``B·A`` - does a rank-8 adapter cut to rank 1 keep its quality, and
how does it compare with an adapter trained at rank 1?

Reads ``evaluations.parquet``: the compression sweep (ablations ``svd_r<k>`` and ``full`` with
delta and the paired test against ``full``) and the ``checkpoints`` curves of the adapters with
the same targets and variant on the same split.

Params (``params["compression"]``, all optional): ``sweep`` (default: ``compression`` if it
has ``svd_r<k>`` rows, else the first sweep that has), ``measure`` (default: the main
measure), ``split`` (default: the main split if the sweep ran there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lorascope.core.names import CHECKPOINTS, FULL, parse_svd_name
from lorascope.report.data import ReportInputs, pick_split
from lorascope.report.model import (
    MECHANICS_NOTE,
    SIGNIFICANCE_NOTE,
    Cell,
    Column,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import main_measure, model_adapters, split_order
from lorascope.report.tables import BM25_KEY, display_models, first_stage_label, split_label

KEY = "table-compression"
DEFAULT_SWEEP = "compression"


def compression_sweeps(inputs: ReportInputs) -> list[str]:
    """Sweeps with ``svd_r<k>`` ablations, ``compression`` first."""
    ev = inputs.evaluations
    svd = ev["ablation"].map(lambda name: parse_svd_name(name) is not None)
    names = set(ev.loc[svd.astype(bool), "sweep"])
    return sorted(names, key=lambda s: (s != DEFAULT_SWEEP, s))


def _value(row: pd.Series | None, column: str = "value") -> float | None:
    if row is None or pd.isna(row[column]):
        return None
    return float(row[column])


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Table | Omitted]:
    """The section's one table."""
    return [compression_table(params, inputs)]


def compression_table(params: Mapping[str, Any], inputs: ReportInputs) -> Table | Omitted:
    """The table (key ``table-compression``) or a one-line note."""
    cfg = params.get("compression") or {}
    found = compression_sweeps(inputs)
    sweep = str(cfg.get("sweep") or (found[0] if found else DEFAULT_SWEEP))
    if sweep not in found:
        what = (f"sweep `{sweep}` has no `svd_r<k>` rows" if cfg.get("sweep")
                else "the study has no SVD compression sweep (`generate: svd`)")
        return Omitted(KEY, f"Post-hoc rank compression not produced: {what}.")
    measure = str(cfg.get("measure") or main_measure(params))
    ev = inputs.evaluations
    rows_ = ev[(ev["sweep"] == sweep) & (ev["measure"] == measure)]
    if rows_.empty:
        return Omitted(KEY, f"Post-hoc rank compression not produced: sweep `{sweep}` has no "
                       f"`{measure}` rows.")
    preferred = ([str(cfg["split"])] if cfg.get("split") else []) + split_order(params)
    split = str(pick_split(list(dict.fromkeys(rows_["split"])), preferred))
    rows_ = rows_[rows_["split"] == split]
    curves = ev[(ev["sweep"] == CHECKPOINTS) & (ev["ablation"] == FULL) & (ev["split"] == split)
                & (ev["measure"] == measure)]

    order = display_models(params, inputs)
    models = [m for m in order if m in set(rows_["model"])]
    # row key -> (label, order, {model: (value cell, delta cell)}); the order: per target set
    # and variant, the trained ranks ascending, then each compressed source, highest k first
    table_rows: dict[str, tuple[str, tuple, dict[str, tuple[Cell, Cell]]]] = {}
    notes: list[str] = []
    steps_differ: list[str] = []
    sources_used: list[str] = []

    def put(key: str, label: str, order: tuple, model: str, value: Cell, delta: Cell) -> None:
        table_rows.setdefault(key, (label, order, {}))[2][model] = (value, delta)

    for model in models:
        mrows = rows_[rows_["model"] == model]
        for source in model_adapters(inputs, model, set(mrows["adapter"])):
            srows = mrows[mrows["adapter"] == source.name]
            step = int(srows["step"].max())
            srows = srows[srows["step"] == step]
            sources_used.append(f"{inputs.model_label(model)} `{source.name}` step {step}")
            trained = [s for s in model_adapters(inputs, model)
                       if s.targets == source.targets and s.variant == source.variant]
            for spec in trained:
                curve = curves[(curves["model"] == model) & (curves["adapter"] == spec.name)]
                if curve.empty:
                    continue
                last = int(curve["step"].max())
                row = curve[curve["step"] == last].iloc[0]
                if spec.name == source.name and last != step:
                    steps_differ.append(f"{inputs.model_label(model)} `{spec.name}` (trained "
                                        f"row step {last}, compressed from step {step})")
                put(f"trained:{spec.name}", f"{spec.name} (trained at rank {spec.rank})",
                    (spec.targets, spec.variant, 0, spec.rank or 0, 0), model,
                    Cell(_value(row), step=last), Cell())
            compressed = sorted(((k, r) for _, r in srows.iterrows()
                                 if (k := parse_svd_name(r["ablation"])) is not None),
                                key=lambda t: -t[0])
            for k, row in compressed:
                put(f"svd:{source.name}:{k}", f"{source.name} → rank {k} (SVD)",
                    (source.targets, source.variant, 1, source.rank or 0, -k), model,
                    Cell(_value(row), step=step),
                    Cell(_value(row, "delta"), significant=bool(row["significant"]),
                         extra={"p_value": _value(row, "p_value"),
                                "p_adjusted": _value(row, "p_adjusted")}))

    columns: list[Column] = []
    for model in models:
        group, mech = inputs.model_label(model), inputs.mechanics_only(model)
        columns.append(Column(model, group, measure, measure, mech))
        columns.append(Column(model, group, "Δ vs full", measure, mech, fmt="delta"))
    bm25 = inputs.first_stage(split, measure)
    rows = [Row(BM25_KEY, first_stage_label(inputs, split),
                [Cell(bm25) if c.fmt == "value" else Cell() for c in columns], baseline=True)]
    for key in sorted(table_rows, key=lambda k: table_rows[k][1]):
        label, _, cells = table_rows[key]
        row_cells: list[Cell] = []
        for model in models:
            value, delta = cells.get(model, (Cell(), Cell()))
            row_cells += [value, delta]
        rows.append(Row(key, label, row_cells))

    notes.append(f"In parentheses: the checkpoint step. Trained rows: each adapter with the "
                 f"same target modules and variant at its last checkpoint (`{CHECKPOINTS}` "
                 f"curves); → rank k: the adapter's LoRA update B·A of every module truncated "
                 f"to its top k singular directions after training; Δ vs full: against the "
                 f"uncompressed adapter on the same queries.")
    if steps_differ:
        notes.append("Compressed at another step than the trained row: "
                     + "; ".join(steps_differ) + ".")
    if any(c.mechanics_only for c in columns):
        notes.append(MECHANICS_NOTE)
    if any(cell.significant for r in rows for cell in r.cells):
        notes.append(SIGNIFICANCE_NOTE)
    else:
        notes.append("No change against the full adapter is significant.")
    return Table(
        key=KEY,
        number=None,
        title=f"Post-hoc rank compression — {split_label(split)}",
        split=split,
        caption=(f"{measure} of adapters trained at each rank and of trained adapters "
                 f"compressed after training by truncated SVD, on {split_label(split)} "
                 "(beside Table 2)."),
        row_header="Adapter",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('evaluations')}`: sweep `{sweep}` ("
            + ", ".join(sources_used) + f"), split `{split}`, measure `{measure}`",
            f"`{inputs.source_path('evaluations')}`: sweep `{CHECKPOINTS}`, ablation `{FULL}`, "
            "the last checkpoint of each trained rank",
        ],
    )
