"""The probing section: per model, the out-of-fold R² of the IR-feature probes by layer (one
panel per feature, one line per checkpoint, the base model dashed), and a table of the layer
from which each feature is linearly readable at each checkpoint.

Reads ``probing.parquet`` (:data:`lorascope.analyses.probing.PROBING`): layer l in 1..L is the
output of block l; step 0 is the base model (every LoRA update off).

Params (``params["probing"]``, all optional): ``threshold`` (default 0.5: "readable" from the
first layer whose R² reaches it), ``adapter`` (default per model: the Table 1 adapter if
probed, else the highest-rank plain ``all``-module adapter), ``split`` (default: the main
split if probed, else the first probed split).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lorascope.analyses.probing import PROBING
from lorascope.analyses.probing.features import FEATURES
from lorascope.analyses.probing.probes import readable_from
from lorascope.report import plotting
from lorascope.report.data import ReportInputs
from lorascope.report.model import Cell, Column, Figure, Omitted, Row, Table
from lorascope.report.runs import common_split, run_notes, showcase_rows, split_order
from lorascope.report.tables import display_models

FIGURE_KEY = "probing"
TABLE_KEY = "table-probing"
DEFAULT_THRESHOLD = 0.5
LABELS = {"bm25": "BM25", "tf": "query-term frequency", "coverage": "IDF-weighted coverage",
          "length": "passage length"}


@dataclass
class ProbeView:
    """One model's probe curves: ``values[feature][step][layer]`` = out-of-fold R²."""

    model: str
    adapter: str
    split: str
    idf: str
    values: dict[str, dict[int, dict[int, float]]]

    @property
    def steps(self) -> list[int]:
        return sorted({s for by_step in self.values.values() for s in by_step})

    @property
    def features(self) -> list[str]:
        return [f for f in FEATURES if f in self.values] + sorted(set(self.values) -
                                                                  set(FEATURES))


def probe_views(params: Mapping[str, Any], inputs: ReportInputs) -> list[ProbeView]:
    """Per model (display order) the probe curves the section shows."""
    cfg = params.get("probing") or {}
    preferred_adapter = cfg.get("adapter") or (params.get("table1") or {}).get("adapter")
    preferred_splits = ([str(cfg["split"])] if cfg.get("split") else []) + split_order(params)
    data = inputs.table(PROBING.name)
    models = display_models(params, inputs)
    models += sorted(set(data["model"]) - set(models))
    views = []
    for model in models:
        shown = showcase_rows(data, model, inputs, preferred_adapter, preferred_splits)
        if shown is None:
            continue
        adapter, split, mdata = shown
        values: dict[str, dict[int, dict[int, float]]] = {}
        for _, r in mdata.iterrows():
            if not pd.isna(r["r2"]):
                values.setdefault(str(r["feature"]), {}).setdefault(
                    int(r["step"]), {})[int(r["layer"])] = float(r["r2"])
        idf = ", ".join(sorted(set(mdata["idf"])))
        views.append(ProbeView(model, adapter, str(split), idf, values))
    return views


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Table | Omitted]:
    """The R²-by-layer figure (key ``probing``) and the readable-from table (``table-probing``)."""
    data = inputs.table(PROBING.name)
    if data.empty:
        return [Omitted(FIGURE_KEY, "Linear probes not produced: "
                                    f"{inputs.missing_note(PROBING.name, 'probing')}.")]
    threshold = (params.get("probing") or {}).get("threshold")
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    views = probe_views(params, inputs)
    return [probe_figure(views, inputs, threshold), readable_table(views, inputs, threshold)]


def _sources(views: list[ProbeView], inputs: ReportInputs) -> list[str]:
    runs = "; ".join(f"{inputs.model_label(v.model)} adapter `{v.adapter}`, split `{v.split}`, "
                     f"IDF from `{v.idf}`" for v in views)
    return [f"`{inputs.source_path(PROBING.name)}`: {runs}"]


def probe_figure(views: list[ProbeView], inputs: ReportInputs, threshold: float) -> Figure:
    plt = plotting.plt()
    features = list(dict.fromkeys(f for v in views for f in v.features))
    n = len(views) * len(features)
    fig, axes = plotting.axes(plt, n, width=3.0, height=2.5, max_cols=len(features))
    low = min(0.0, min(x for v in views for by_step in v.values.values()
                       for curve in by_step.values() for x in curve.values()))
    for i, view in enumerate(views):
        label = plotting.model_title(inputs.model_label(view.model),
                                     inputs.mechanics_only(view.model))
        steps = view.steps
        cmap = plt.get_cmap("viridis")
        trained = [s for s in steps if s != 0]
        for j, feature in enumerate(features):
            ax = axes[i * len(features) + j]
            for step in steps:
                curve = (view.values.get(feature) or {}).get(step) or {}
                if not curve:
                    continue
                layers = sorted(curve)
                if step == 0:
                    style = {"color": "black", "ls": "--"}
                else:
                    k = trained.index(step)
                    style = {"color": cmap(0.15 + 0.7 * k / max(1, len(trained) - 1))}
                ax.plot(layers, [curve[layer] for layer in layers], marker="o", ms=3, lw=1.2,
                        label=plotting.step_label(step), **style)
            ax.axhline(threshold, color="#ff3b30", lw=0.8, ls=":")
            ax.set_ylim(max(low, -1.0) - 0.05, 1.02)
            ax.set_xlabel("layer (output of block l)")
            ax.set_ylabel("out-of-fold R²")
            ax.set_title(f"{label}: {LABELS.get(feature, feature)}", fontsize=8)
            if j == 0:
                ax.legend(fontsize=6, title="step", title_fontsize=6)
    fig.suptitle("Linear probes: IR features read from each layer", fontsize=10)
    fig.tight_layout()
    return plotting.finish(
        fig,
        FIGURE_KEY,
        "Figure: Linear probes — IR features by layer",
        "Out-of-fold R² of ridge probes (standardised states, penalty chosen by an inner "
        "query-grouped cross-validation) that predict each (query, passage) pair's BM25 score, "
        "query-term frequency, IDF-weighted query-term coverage and passage length (each of the "
        "part of the passage the model sees, cut at its token limit) from the scoring token's "
        "hidden state at each layer (final-normed for decoders, as the lens reads it); folds "
        "keep queries apart. Dashed: the base model (every LoRA update off); "
        f"dotted red: R² = {threshold:g}.",
        _sources(views, inputs),
    )


def readable_table(views: list[ProbeView], inputs: ReportInputs, threshold: float) -> Table:
    columns: list[Column] = []
    for view in views:
        group, mech = inputs.model_label(view.model), inputs.mechanics_only(view.model)
        for feature in view.features:
            columns.append(Column(view.model, group, f"{LABELS.get(feature, feature)} from",
                                  feature, mech, fmt="text"))
        columns.append(Column(view.model, group, "BM25 best R²", "bm25", mech))
    steps = sorted({s for v in views for s in v.steps})
    rows = []
    for step in steps:
        cells = []
        for view in views:
            for feature in view.features:
                curve = (view.values.get(feature) or {}).get(step) or {}
                layer = readable_from(curve, threshold)
                if not curve:
                    cells.append(Cell())
                elif layer is None:
                    cells.append(Cell(label="not reached", extra={"best": max(curve.values())}))
                else:
                    cells.append(Cell(float(layer), label=f"{layer} of {max(curve)}",
                                      extra={"r2": curve[layer]}))
            bm25 = (view.values.get("bm25") or {}).get(step) or {}
            cells.append(Cell(max(bm25.values())) if bm25 else Cell())
        rows.append(Row(str(step), plotting.step_label(step), cells))
    notes = [
        (f"Readable from layer l: the first layer whose out-of-fold R² reaches {threshold:g}; "
         "\"base\": every LoRA update off."),
    ] + run_notes(views, inputs)
    return Table(
        key=TABLE_KEY,
        number=None,
        title="IR features linearly readable from layer",
        split=common_split(views),
        caption=(
            f"Per checkpoint, the shallowest layer whose ridge probe explains at least "
            f"{threshold:g} of a feature's variance across held-out queries' pairs, and the best "
            "layer's R² for BM25."
        ),
        row_header="Checkpoint",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=_sources(views, inputs),
    )
