"""The activation-patching section: heatmaps of the share of the score change each patch
recovers - block x token group per perturbation, block x head for the head-patched
perturbation (``tfc1`` by default) - base model and trained checkpoints side by side, and a
table of the heads carrying most of it per step.

Reads ``patching.parquet`` (:data:`~lorascope.analyses.patching.PATCHING`) and
``patching_heads.parquet`` (:data:`~lorascope.analyses.patching.PATCHING_HEADS`). Per model
the adapter is the Table 1 adapter if patched (else the highest-rank plain ``all`` one) and the
split the main split if patched (else the first). The colour scale is clipped at
``COLOUR_LIMIT`` (shares of a perturbation whose changes nearly cancel can be large); the cells
print the true values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lorascope.analyses.patching import PATCHING, PATCHING_HEADS
from lorascope.analyses.patching.patch import rank_heads
from lorascope.report import plotting
from lorascope.report.data import ReportInputs
from lorascope.report.model import Cell, Column, Figure, Omitted, Row, Table
from lorascope.report.runs import common_split, run_notes, showcase_rows, split_order
from lorascope.report.tables import display_models

FIGURE_KEY = "patching"
HEADS_FIGURE_KEY = "patching-heads"
TABLE_KEY = "table-patching-heads"
GROUP_ORDER = ("query", "passage", "injected", "scoring", "other")
PERTURBATION_ORDER = ("tfc1", "query_term_removal", "length_control")
TOP = 3
COLOUR_LIMIT = 2.0


@dataclass
class PatchingView:
    """One model's patching results: one adapter and split."""

    model: str
    adapter: str
    split: str
    layers: pd.DataFrame
    heads: pd.DataFrame

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in set(self.layers["step"]))

    @property
    def perturbations(self) -> list[str]:
        have = set(self.layers["perturbation"])
        return [p for p in PERTURBATION_ORDER if p in have] + sorted(have - set(PERTURBATION_ORDER))


def patching_views(params: Mapping[str, Any], inputs: ReportInputs) -> list[PatchingView]:
    table = inputs.table(PATCHING.name)
    heads = inputs.table(PATCHING_HEADS.name)
    preferred = (params.get("table1") or {}).get("adapter")
    views = []
    for model in display_models(params, inputs):
        shown = showcase_rows(table, model, inputs, preferred, split_order(params))
        if shown is None:
            continue
        adapter, split, mdata = shown
        hdata = heads[(heads["model"] == model) & (heads["adapter"] == adapter)
                      & (heads["split"] == split)]
        views.append(PatchingView(model, adapter, str(split), mdata, hdata))
    return views


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Table | Omitted]:
    """The group heatmaps (``patching``), the head heatmaps (``patching-heads``) and the top
    heads table (``table-patching-heads``)."""
    if inputs.table(PATCHING.name).empty:
        return [Omitted(FIGURE_KEY, "Activation patching not produced: "
                        f"{inputs.missing_note(PATCHING.name, 'patching')}.")]
    views = patching_views(params, inputs)
    out: list[Figure | Table | Omitted] = [group_heatmap(views, inputs)]
    with_heads = [v for v in views if not v.heads.empty]
    if with_heads:
        out += [head_heatmap(with_heads, inputs), heads_table(with_heads, inputs)]
    else:
        out.append(Omitted(HEADS_FIGURE_KEY, "Head patching not produced: "
                           f"{inputs.missing_note(PATCHING_HEADS.name, 'patching')}."))
    return out


def _sources(views: list[PatchingView], inputs: ReportInputs, name: str) -> list[str]:
    runs = "; ".join(f"{inputs.model_label(v.model)} adapter `{v.adapter}`, split `{v.split}`"
                     for v in views)
    return [f"`{inputs.source_path(name)}`: {runs}"]


def _grid(frame: pd.DataFrame, column: str, labels: list[Any]) -> np.ndarray:
    layers = int(frame["layer"].max()) + 1 if not frame.empty else 0
    grid = np.full((layers, len(labels)), np.nan)
    for _, r in frame.iterrows():
        if r[column] in labels and not pd.isna(r["share"]):
            grid[int(r["layer"]), labels.index(r[column])] = float(r["share"])
    return grid


def _heatmap(plt: Any, fig: Any, panels: list[tuple[Any, np.ndarray, str, list[str]]],
             annotate: bool) -> None:
    finite = [x for _, g, _, _ in panels for x in g.flatten() if not np.isnan(x)]
    bound = min(max([abs(x) for x in finite] + [1.0]), COLOUR_LIMIT)
    image = None
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    for ax, grid, title, xlabels in panels:
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower",
                          vmin=-bound, vmax=bound)
        if annotate and grid.size <= 80:
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(xlabels, fontsize=7, rotation=45 if len(xlabels) > 6 else 0)
        ax.set_yticks(range(grid.shape[0]))
        ax.set_yticklabels([str(i) for i in range(grid.shape[0])], fontsize=7)
        ax.set_ylabel("block")
        ax.set_title(title, fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=[p[0] for p in panels], shrink=0.8).set_label("share of Δ")


def _title(view: PatchingView, inputs: ReportInputs, what: str, step: int) -> str:
    label = plotting.model_title(inputs.model_label(view.model), inputs.mechanics_only(view.model))
    return f"{label}, {view.adapter}\n{what}, {plotting.step_label(step)}"


def _tiny(view: PatchingView, perturbation: str, step: int) -> bool:
    rows = view.layers[(view.layers["perturbation"] == perturbation)
                       & (view.layers["step"] == step)]
    return bool(rows["tiny"].any()) if not rows.empty else False


def group_heatmap(views: list[PatchingView], inputs: ReportInputs) -> Figure:
    plt = plotting.plt()
    rows = [(v, p) for v in views for p in v.perturbations]
    cols = max(len(v.steps) for v in views)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.6 * len(rows)),
                             squeeze=False, layout="constrained")
    panels = []
    for r, (view, perturbation) in enumerate(rows):
        data = view.layers[view.layers["perturbation"] == perturbation]
        present = set(data["group"])
        groups = [g for g in GROUP_ORDER if g in present] + sorted(present - set(GROUP_ORDER))
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(view.steps):
                ax.set_visible(False)
                continue
            step = view.steps[c]
            grid = _grid(data[data["step"] == step], "group", groups)
            flag = " (tiny Δ)" if _tiny(view, perturbation, step) else ""
            panels.append((ax, grid, _title(view, inputs, perturbation + flag, step), groups))
    _heatmap(plt, fig, panels, annotate=True)
    fig.suptitle("Activation patching: share of the score change per block × token group",
                 fontsize=10)
    return plotting.finish(
        fig, FIGURE_KEY, "Figure: Activation patching — block × token group",
        "Share of each perturbation's score change (Σ over pairs of patched − baseline over "
        "Σ of perturbed − baseline) recovered when the output of block l is copied from the "
        "perturbed run into the baseline run at one token group's positions: the query's "
        "tokens, the other passage tokens, the injected (inserted / replaced) tokens, the "
        "scoring token (BERT [CLS], a decoder's last token) and the rest (special tokens, "
        "prompt words). A position is in one group, injected first: where a decoder's last "
        "token is itself injected (the removed term ends the passage) it counts as injected "
        "and that pair has no scoring position (the summary counts such pairs as "
        "scoring_injected). The query term is the query's highest-IDF term among those "
        "occurring in the split, IDF over the split's passages (not the shipped collection). "
        "Base (every LoRA update off, the last checkpoint's head) and trained "
        "checkpoints side by side; \"tiny Δ\": the perturbation barely moves the score.",
        _sources(views, inputs, PATCHING.name),
    )


def head_heatmap(views: list[PatchingView], inputs: ReportInputs) -> Figure:
    plt = plotting.plt()
    rows = [(v, p) for v in views for p in sorted(set(v.heads["perturbation"]),
                                                   key=_perturbation_key)]
    cols = max(len(v.steps) for v in views)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.6 * cols, 2.8 * len(rows)),
                             squeeze=False, layout="constrained")
    panels = []
    for r, (view, perturbation) in enumerate(rows):
        data = view.heads[view.heads["perturbation"] == perturbation]
        heads = sorted(int(h) for h in set(data["head"]))
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(view.steps):
                ax.set_visible(False)
                continue
            step = view.steps[c]
            grid = _grid(data[data["step"] == step], "head", heads)
            panels.append((ax, grid, _title(view, inputs, perturbation, step),
                           [str(h) for h in heads]))
            ax.set_xlabel("head")
    _heatmap(plt, fig, panels, annotate=False)
    fig.suptitle("Activation patching: share of the score change per attention head",
                 fontsize=10)
    return plotting.finish(
        fig, HEADS_FIGURE_KEY, "Figure: Activation patching — block × attention head",
        "Share of the score change recovered when one head's output (its slice of the "
        "attention output projection's input) in block l is copied from the perturbed run "
        "at every position; base model and trained checkpoints side by side.",
        _sources(views, inputs, PATCHING_HEADS.name),
    )


def _perturbation_key(name: str) -> tuple[int, str]:
    return (PERTURBATION_ORDER.index(name) if name in PERTURBATION_ORDER else 99, name)


def top_heads(frame: pd.DataFrame, count: int = TOP) -> list[tuple[int, int, float]]:
    """The ``count`` (layer, head, share) of the largest single-head share
    (:func:`~lorascope.analyses.patching.patch.rank_heads`)."""
    return rank_heads(zip(frame["share"], frame["layer"], frame["head"]), count)


def heads_table(views: list[PatchingView], inputs: ReportInputs) -> Table:
    perturbation = min({p for v in views for p in set(v.heads["perturbation"])},
                       key=_perturbation_key)
    columns: list[Column] = []
    for view in views:
        group, mech = inputs.model_label(view.model), inputs.mechanics_only(view.model)
        columns.append(Column(view.model, group, f"top {TOP} heads (block.head: share)",
                              perturbation, mech, fmt="text"))
        columns.append(Column(view.model, group, f"sum of the top-{TOP} single-head shares",
                              perturbation, mech))
        columns.append(Column(view.model, group, "mean Δ", perturbation, mech, fmt="delta"))
    steps = sorted({s for v in views for s in v.steps})
    rows = []
    for step in steps:
        cells = []
        for view in views:
            data = view.heads[(view.heads["perturbation"] == perturbation)
                              & (view.heads["step"] == step)]
            if data.empty:
                cells += [Cell(), Cell(), Cell()]
                continue
            top = top_heads(data)
            label = ", ".join(f"{layer}.{head}: {value:.2f}" for layer, head, value in top)
            cells.append(Cell(None, label=label))
            cells.append(Cell(sum(v for _, _, v in top)))
            cells.append(Cell(float(data["mean_delta"].iloc[0])))
        rows.append(Row(str(step), plotting.step_label(step), cells))
    notes = [(f"Perturbation `{perturbation}`; share = Σ(patched − baseline) / Σ(perturbed − "
              "baseline) over the pairs; block and head numbers from 0; \"base\": every LoRA "
              "update off, read by the last checkpoint's head.")]
    notes.append(f"\"Sum of the top-{TOP} single-head shares\" adds the shares of heads each "
                 "patched alone; it is not a joint patch of those heads (none was run), and "
                 "single-head shares are not additive: the sum can exceed or fall short of "
                 "what patching them together recovers.")
    notes += run_notes(views, inputs)
    return Table(
        key=TABLE_KEY,
        number=None,
        title=f"Heads carrying {perturbation}",
        split=common_split(views),
        caption=(f"Per checkpoint, the attention heads whose output, patched alone from the "
                 f"{perturbation} run, recovers the largest share of its score change, and "
                 f"the sum of those top-{TOP} single-head shares (not a joint patch of the "
                 "heads; shares are not additive)."),
        row_header="Checkpoint",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=_sources(views, inputs, PATCHING_HEADS.name),
    )
