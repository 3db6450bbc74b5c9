"""The boundary-layer section of the report: the boundary curve and the pruned-vs-full table.

The curve reads a ``boundary`` sweep from ``evaluations.parquet`` (metric when keeping LoRA in
layers 0..b; the b marked is the boundary analysis' own choice from ``boundary.parquet`` where
it ran, else :func:`~lorascope.analyses.boundary.selection.select_boundary`'s rule on the
selection split). The table gives, per model, adapter and test split, the boundary ``b`` chosen
on the selection split, the share of LoRA parameters the pruned adapter drops, the full and the
pruned adapter's metrics with the paired test, and the unmerged scoring speed-up; it reads
``boundary.parquet`` (one row per comparison: b, parameters, timing) and the
``boundary_pruned`` rows of ``evaluations.parquet`` (ablations ``full`` and ``pruned``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lorascope.analyses.boundary import BOUNDARY, PRUNED, PRUNED_SWEEP
from lorascope.analyses.boundary.selection import choose
from lorascope.core.names import FULL, parse_boundary_name
from lorascope.report import plotting
from lorascope.report.data import ReportInputs
from lorascope.report.model import (
    MECHANICS_NOTE,
    SIGNIFICANCE_NOTE,
    Cell,
    Column,
    Figure,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import main_measure, measure_pairs, sort_splits
from lorascope.report.tables import display_models, split_label

KEY = "table-boundary"


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Table | Omitted]:
    """The section's figure and table, in reading order."""
    return [boundary_curves(params, inputs), boundary_table(params, inputs)]


def _value(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row or pd.isna(row[column]):
        return None
    return float(row[column])


def boundary_table(params: Mapping[str, Any], inputs: ReportInputs) -> Table | Omitted:
    """The table (key ``table-boundary``), or a one-line note when no comparison ran.

    ``params["boundary"]["measures"]`` (optional, ``[[label, measure], ...]``) lists the
    metrics compared; by default the measure b was chosen by."""
    data = inputs.table(BOUNDARY.name)
    if data.empty:
        return Omitted(KEY, "Boundary-layer table not produced: "
                       f"{inputs.missing_note(BOUNDARY.name, 'boundary')}.")
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
                 "split, ties to the smallest b; `lorascope.analyses.boundary.selection.select_boundary`).")
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


def choose_boundary(
    points: Mapping[int, float], measure: str, num_layers: int
) -> int | None:
    """The boundary :func:`~lorascope.analyses.boundary.selection.select_boundary` chooses from
    a boundary curve (``{b: value}``, ``b = num_layers - 1`` being the full adapter): its rule
    (:func:`~lorascope.analyses.boundary.selection.choose`), not a copy of it. None when the
    curve has no full-adapter point or no usable value."""

    usable = {b: float(v) for b, v in points.items()
              if 0 <= b <= num_layers - 1 and v is not None and v == v}
    if num_layers - 1 not in usable:
        return None
    return choose(usable)


def _analysis_boundary(inputs: ReportInputs, model: str, adapter: str, step: int) -> int | None:
    """The b the boundary analysis chose for this run (``boundary.parquet``), if it ran."""
    rows = inputs.table(BOUNDARY.name)
    rows = rows[(rows["model"] == model) & (rows["adapter"] == adapter)
                & (rows["step"] == step)]
    return None if rows.empty else int(rows["b"].iloc[0])


def boundary_curves(params: Mapping[str, Any], inputs: ReportInputs) -> Figure | Omitted:
    cfg = params.get("boundary") or None
    if cfg is None:
        return Omitted("boundary", "Boundary curve not produced: the study has no `boundary` "
                       "sweep.")
    sweep, adapter = str(cfg["sweep"]), str(cfg.get("adapter") or "")
    measure = str(cfg.get("measure") or "nDCG@10")
    selection = str(cfg.get("selection_split") or "validation")
    ev = inputs.evaluations
    ev = ev[(ev["sweep"] == sweep) & (ev["adapter"] == adapter) & (ev["measure"] == measure)]
    if ev.empty:
        what = "has no" if not inputs.has_sweep(sweep) else "has no rows of the"
        return Omitted("boundary", f"Boundary curve not produced: the study {what} `{sweep}` "
                       f"sweep (adapter `{adapter}`, measure `{measure}`).")
    models = [m for m in display_models(params, inputs) if m in set(ev["model"])]
    plt = plotting.plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plotting.axes(plt, len(models), width=4.2, height=3.1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = [selection, params.get("main_split") or ""] + list(params.get("companion_splits") or [])
    choices: list[str] = []
    from_analysis: list[str] = []
    for ax, model in zip(axes, models):
        mrows = ev[ev["model"] == model]
        step = int(mrows["step"].max())
        mrows = mrows[mrows["step"] == step]
        zeroed = inputs.sweep_ablations(sweep, model)
        n_layers = inputs.num_layers(model)
        bs: dict[str, int] = {}
        for name in set(mrows["ablation"]):
            b = parse_boundary_name(name)
            if b is not None:
                bs[name] = b
            elif zeroed and zeroed.get(name) and name != FULL:
                bs[name] = min(layer for layer, _ in zeroed[name]) - 1
        last = (n_layers - 1) if n_layers else (max(bs.values(), default=-1) + 1)
        bs[FULL] = last
        splits = sorted(set(mrows["split"]), key=lambda s: (order.index(s) if s in order
                                                            else len(order), s))
        curves: dict[str, dict[int, float]] = {}
        for split in splits:
            srows = mrows[mrows["split"] == split]
            pts = {bs[r["ablation"]]: float(r["value"]) for _, r in srows.iterrows()
                   if r["ablation"] in bs and not pd.isna(r["value"])}
            curves[split] = dict(sorted(pts.items()))
        chosen = _analysis_boundary(inputs, model, adapter, step)
        label = inputs.model_label(model)
        if chosen is not None:
            from_analysis.append(label)
        else:
            chosen = choose_boundary(curves.get(selection, {}), measure, last + 1)
        for k, (split, pts) in enumerate(curves.items()):
            style = "-" if split == selection else "--"
            ax.plot(list(pts), list(pts.values()), marker="o", ms=3, ls=style,
                    color=colors[k % len(colors)], label=split_label(split)
                    + (" (selection)" if split == selection else ""))
            if chosen is not None and chosen in pts:
                ax.plot(chosen, pts[chosen], marker="*", ms=11, color=colors[k % len(colors)],
                        mec="black", mew=0.6, ls="none")
        if chosen is not None:
            ax.axvline(chosen, color="black", ls=":", lw=1)
            right = chosen >= 0.75 * max(last, 1)
            ax.annotate(f"b = {chosen}", (chosen, 0), xycoords=("data", "axes fraction"),
                        xytext=(-4 if right else 4, 4), textcoords="offset points", fontsize=7,
                        ha="right" if right else "left")
            parts = [f"{split_label(s)} {pts[chosen]:.4f} vs full {pts[last]:.4f}"
                     for s, pts in curves.items() if chosen in pts and last in pts]
            choices.append(f"{label}: b = {chosen} of {last + 1} layers ({'; '.join(parts)})")
        else:
            choices.append(f"{label}: no boundary chosen (no `{selection}` rows)")
        ax.set_title(plotting.model_title(label, inputs.mechanics_only(model)))
        ax.set_xlabel("boundary b (LoRA kept in layers 0..b)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Boundary layer search (adapter {adapter}; star: the chosen b)", fontsize=10)
    fig.tight_layout()
    rule = (f"b chosen on `{selection}`: the best {measure}, ties to the smallest b "
            "(`lorascope.analyses.boundary.selection.select_boundary`)")
    if from_analysis:
        rule += ("; for " + ", ".join(from_analysis) + " the b of the boundary analysis "
                 "(`boundary.parquet`), which pruned and tested that adapter")
    sources = [f"`{inputs.source_path('evaluations')}`: sweep `{sweep}`, adapter `{adapter}`, "
               f"measure `{measure}`, splits "
               + ", ".join(f"`{s}`" for s in sorted(set(ev["split"])))]
    if from_analysis:
        sources.append(f"`{inputs.source_path('boundary')}`: the chosen b")
    return plotting.finish(
        fig,
        "boundary",
        "Figure: Boundary layer curve",
        f"{measure} when LoRA updates of `{adapter}` are kept only in layers 0..b (b = last "
        f"layer: the full adapter); {rule}. Chosen: " + "; ".join(choices) + ".",
        sources,
    )
