"""The relevance-lens section: a layer × checkpoint heatmap per model of the ranking quality the
trained score head gives when it reads each layer's hidden state, and a table of the layer
from which relevance is readable at each checkpoint.

Reads ``lens.parquet`` (:data:`lorascope.analyses.lens.LENS`): layer l in 1..L is the output of
block l (L = the model's own score); step 0 is the base model (every LoRA update off) read by
the head of the run's last checkpoint.

Params (``params["lens"]``, all optional): ``measure`` (default: the main measure),
``adapter`` (default per model: the Table 1 adapter if lensed, else the highest-rank plain
``all``-module adapter), ``split`` (default: the main split if lensed, else the first lensed
split), ``epsilon`` (default: the lens stage's, 0.01).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lorascope.analyses.lens import LENS
from lorascope.analyses.lens.readable import DEFAULT_EPSILON, readable_from
from lorascope.report import plotting
from lorascope.report.data import ReportInputs
from lorascope.report.model import Cell, Column, Figure, Omitted, Row, Table
from lorascope.report.runs import common_split, main_measure, run_notes, showcase_rows, split_order
from lorascope.report.tables import display_models, split_label

FIGURE_KEY = "lens"
TABLE_KEY = "table-lens"


@dataclass
class LensView:
    """One model's lens grid: ``values[step][layer]`` of one adapter, split and measure."""

    model: str
    adapter: str
    split: str
    measure: str
    values: dict[int, dict[int, float]]

    @property
    def steps(self) -> list[int]:
        return sorted(self.values)

    @property
    def num_layers(self) -> int:
        return max((max(v) for v in self.values.values() if v), default=0)


def lens_views(params: Mapping[str, Any], inputs: ReportInputs) -> list[LensView]:
    """Per model (display order) the lens grid the section shows."""
    cfg = params.get("lens") or {}
    measure = str(cfg.get("measure") or main_measure(params))
    preferred_adapter = cfg.get("adapter") or (params.get("table1") or {}).get("adapter")
    preferred_splits = ([str(cfg["split"])] if cfg.get("split") else []) + split_order(params)
    lens = inputs.table(LENS.name)
    data = lens[lens["measure"] == measure]
    views = []
    for model in display_models(params, inputs):
        shown = showcase_rows(data, model, inputs, preferred_adapter, preferred_splits)
        if shown is None:
            continue
        adapter, split, mdata = shown
        values: dict[int, dict[int, float]] = {}
        for _, r in mdata.iterrows():
            if not pd.isna(r["value"]):
                values.setdefault(int(r["step"]), {})[int(r["layer"])] = float(r["value"])
        views.append(LensView(model, adapter, str(split), measure, values))
    return views


def _no_lens(params: Mapping[str, Any], inputs: ReportInputs) -> str | None:
    lens = inputs.table(LENS.name)
    if lens.empty:
        return inputs.missing_note(LENS.name, "lens")
    measure = str((params.get("lens") or {}).get("measure") or main_measure(params))
    if not (lens["measure"] == measure).any():
        have = ", ".join(f"`{m}`" for m in sorted(set(lens["measure"])))
        return f"`lens.parquet` has no `{measure}` rows (it has {have})"
    return None


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Table | Omitted]:
    """The heatmap figure (key ``lens``) and the readable-from table (``table-lens``)."""
    why = _no_lens(params, inputs)
    if why is not None:
        return [Omitted(FIGURE_KEY, f"Relevance lens not produced: {why}.")]
    views = lens_views(params, inputs)
    epsilon = (params.get("lens") or {}).get("epsilon")
    epsilon = DEFAULT_EPSILON if epsilon is None else float(epsilon)
    return [lens_heatmap(views, inputs, epsilon), readable_table(views, inputs, epsilon)]


def _sources(views: list[LensView], inputs: ReportInputs) -> list[str]:
    runs = "; ".join(f"{inputs.model_label(v.model)} adapter `{v.adapter}`, split `{v.split}`"
                     for v in views)
    return [f"`{inputs.source_path('lens')}`: measure `{views[0].measure}`; {runs}"]


def lens_heatmap(views: list[LensView], inputs: ReportInputs, epsilon: float) -> Figure:
    plt = plotting.plt()
    from matplotlib.patches import Rectangle

    tallest = max(v.num_layers for v in views)
    height = min(7.0, 1.6 + 0.22 * tallest)
    widest = max(len(v.steps) for v in views)
    fig, axes = plotting.axes(plt, len(views), width=max(3.6, 1.6 + 0.55 * widest),
                              height=height, layout="constrained")
    finite = [x for v in views for layer in v.values.values() for x in layer.values()]
    vmin, vmax = min(finite), max(finite)
    image = None
    for ax, view in zip(axes, views):
        steps, n = view.steps, view.num_layers
        grid = np.full((n, len(steps)), np.nan)
        for j, step in enumerate(steps):
            for layer, value in view.values[step].items():
                grid[layer - 1, j] = value
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower",
                          vmin=vmin, vmax=vmax)
        if grid.size <= 160:
            for (li, sj), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(sj, li, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if value > vmin + 0.6 * (vmax - vmin) else "white")
        for j, step in enumerate(steps):
            layer = readable_from(view.values[step], epsilon)
            if layer is not None:
                ax.add_patch(Rectangle((j - 0.5, layer - 1.5), 1, 1, fill=False,
                                       edgecolor="#ff3b30", lw=1.6))
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([plotting.step_label(s) for s in steps], fontsize=7,
                           rotation=90 if len(steps) > 8 else 0)
        ax.set_yticks(range(n))
        ax.set_yticklabels([str(i + 1) for i in range(n)], fontsize=7)
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel("layer (output of block l)")
        label = plotting.model_title(inputs.model_label(view.model),
                                     inputs.mechanics_only(view.model))
        ax.set_title(f"{label}\n{view.adapter}, {split_label(view.split)}", fontsize=9)
    if image is not None:
        cb = fig.colorbar(image, ax=axes, shrink=0.85)
        cb.set_label(f"{views[0].measure} read at the layer")
    fig.suptitle("Relevance lens: the trained head applied to every layer", fontsize=10)
    return plotting.finish(
        fig,
        FIGURE_KEY,
        "Figure: Relevance lens — layer × checkpoint",
        f"{views[0].measure} of the ranking the run's trained score head gives when it reads "
        "each layer's (final-normed) last-token hidden state instead of the last layer's, for "
        "the base model (\"base\": every LoRA update off, read by the last checkpoint's head) "
        "and each checkpoint; layer l is the output of block l, the top row the model's own "
        f"score. Red outline: the first layer within ε = {epsilon:g} of the top layer's value "
        "(relevance readable from there on).",
        _sources(views, inputs),
    )


def readable_table(views: list[LensView], inputs: ReportInputs, epsilon: float) -> Table:
    columns: list[Column] = []
    for view in views:
        group, mech = inputs.model_label(view.model), inputs.mechanics_only(view.model)
        columns.append(Column(view.model, group, "readable from layer", view.measure, mech,
                              fmt="text"))
        columns.append(Column(view.model, group, "last layer", view.measure, mech))
    steps = sorted({s for v in views for s in v.steps})
    rows = []
    for step in steps:
        cells = []
        for view in views:
            curve = view.values.get(step) or {}
            layer = readable_from(curve, epsilon)
            top = max(curve) if curve else None
            if layer is None or top is None:
                cells += [Cell(), Cell()]
                continue
            cells.append(Cell(float(layer), label=f"{layer} of {top}",
                              extra={"value": curve[layer]}))
            cells.append(Cell(curve[top]))
        rows.append(Row(str(step), plotting.step_label(step), cells))
    notes = [
        f"Readable from layer l: the first layer whose {views[0].measure} is at least the last "
        f"layer's value − ε (ε = {epsilon:g}); \"base\": every LoRA update off, read by the "
        "last checkpoint's head.",
    ]
    notes += run_notes(views, inputs)
    return Table(
        key=TABLE_KEY,
        number=None,
        title="Relevance readable from layer",
        split=common_split(views),
        caption=(
            f"Per checkpoint, the shallowest layer from which the trained head reads a ranking "
            f"within ε of the full model's, and the full model's {views[0].measure}."
        ),
        row_header="Checkpoint",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=_sources(views, inputs),
    )
