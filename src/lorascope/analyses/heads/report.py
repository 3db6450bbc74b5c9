"""The attention-head section: per model, heatmaps layer x head of the drop each head's ablation
causes, the base model beside the trained checkpoint(s), significant cells marked; a table of
the heads that matter most per step; a line on the heads LoRA made matter (drop at the trained
step minus drop at the base).

Reads ``heads.parquet`` (:data:`lorascope.analyses.heads.HEADS`): ``layer`` is the 0-based
block, ``head`` the 0-based query head; step 0 is the base model (every LoRA update off, the
last checkpoint's score head).

Params (``params["heads"]``, all optional): ``measure`` (default: the main measure),
``adapter`` (default per model: the Table 1 adapter if ablated, else the highest-rank plain
``all``-module adapter), ``split`` (default: the main split if ablated, else the first one),
``top`` (rows of the table, default 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lorascope.analyses.heads import HEADS
from lorascope.report import plotting
from lorascope.report.data import ReportInputs
from lorascope.report.model import (
    SIGNIFICANT,
    Cell,
    Column,
    Figure,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import common_split, main_measure, run_notes, showcase_rows, split_order
from lorascope.report.tables import display_models, split_label

FIGURE_KEY = "heads"
TABLE_KEY = "table-heads"
DEFAULT_TOP = 5
BASE_STEP = 0

#: ``(layer, head) -> (drop, significant, corrected p)``
Grid = dict[tuple[int, int], tuple[float, bool, float]]


@dataclass
class HeadsView:
    """One model's head ablation: ``values[step][(layer, head)] = (drop, significant, p_adj)``."""

    model: str
    adapter: str
    split: str
    measure: str
    mode: str
    values: dict[int, Grid]

    @property
    def steps(self) -> list[int]:
        return sorted(self.values)

    @property
    def shape(self) -> tuple[int, int]:
        cells = [k for grid in self.values.values() for k in grid]
        return (max(layer for layer, _ in cells) + 1, max(head for _, head in cells) + 1)

    def ranked(self, step: int) -> list[tuple[tuple[int, int], float, bool, float]]:
        """The heads of ``step`` by drop, largest first (ties: shallower, lower head)."""
        grid = self.values[step]
        return sorted(((k, *v) for k, v in grid.items()), key=lambda e: (-e[1], e[0]))

    def lora_made_matter(self, step: int) -> list[tuple[tuple[int, int], float]]:
        """Heads by drop at ``step`` minus drop at the base, largest first."""
        base = self.values.get(BASE_STEP) or {}
        diff = [(k, v[0] - base[k][0]) for k, v in self.values[step].items() if k in base]
        return sorted(diff, key=lambda e: (-e[1], e[0]))


def _cfg(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return params.get("heads") or {}


def heads_views(params: Mapping[str, Any], inputs: ReportInputs) -> list[HeadsView]:
    """Per model (display order) the head-ablation grids the section shows."""
    cfg = _cfg(params)
    measure = str(cfg.get("measure") or main_measure(params))
    preferred_adapter = cfg.get("adapter") or (params.get("table1") or {}).get("adapter")
    preferred_splits = ([str(cfg["split"])] if cfg.get("split") else []) + split_order(params)
    table = inputs.table(HEADS.name)
    data = table[table["measure"] == measure]
    views = []
    for model in display_models(params, inputs):
        shown = showcase_rows(data, model, inputs, preferred_adapter, preferred_splits)
        if shown is None:
            continue
        adapter, split, mdata = shown
        mode = str(mdata["mode"].iloc[0])
        mdata = mdata[mdata["mode"] == mode]
        values: dict[int, Grid] = {}
        for step, layer, head, drop, sig, p in zip(mdata["step"], mdata["layer"], mdata["head"],
                                                   mdata["drop"], mdata["significant"],
                                                   mdata["p_adjusted"]):
            values.setdefault(int(step), {})[(int(layer), int(head))] = (
                float(drop), bool(sig), float(p))
        views.append(HeadsView(model, adapter, str(split), measure, mode, values))
    return views


def _no_heads(params: Mapping[str, Any], inputs: ReportInputs) -> str | None:
    table = inputs.table(HEADS.name)
    if table.empty:
        return inputs.missing_note(HEADS.name, "heads")
    measure = str(_cfg(params).get("measure") or main_measure(params))
    if not (table["measure"] == measure).any():
        have = ", ".join(f"`{m}`" for m in sorted(set(table["measure"])))
        return f"`heads.parquet` has no `{measure}` rows (it has {have})"
    return None


def items(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Table | Omitted | str]:
    """The heatmap figure (key ``heads``), the top-heads table (``table-heads``) and a line on
    the heads LoRA made matter."""
    why = _no_heads(params, inputs)
    if why is not None:
        return [Omitted(FIGURE_KEY, f"Attention-head ablation not produced: {why}.")]
    views = heads_views(params, inputs)
    top = int(_cfg(params).get("top") or DEFAULT_TOP)
    out: list[Figure | Table | Omitted | str] = [heads_heatmap(views, inputs),
                                                 top_heads_table(views, inputs, top)]
    line = lora_line(views, inputs)
    if line:
        out.append(line)
    return out


def _sources(views: list[HeadsView], inputs: ReportInputs) -> list[str]:
    runs = "; ".join(f"{inputs.model_label(v.model)} adapter `{v.adapter}`, split `{v.split}`, "
                     f"{v.mode} ablation" for v in views)
    return [f"`{inputs.source_path('heads')}`: measure `{views[0].measure}`; {runs}"]


def head_label(layer: int, head: int) -> str:
    return f"L{layer} H{head}"


def heads_heatmap(views: list[HeadsView], inputs: ReportInputs) -> Figure:
    plt = plotting.plt()

    panels = [(v, s) for v in views for s in v.steps]
    widest = max(len(v.steps) for v in views)
    layers = max(v.shape[0] for v in views)
    heads = max(v.shape[1] for v in views)
    width = min(7.0, 1.4 + 0.28 * heads)
    height = min(7.0, 1.4 + 0.28 * layers)
    fig, axes = plotting.axes(plt, len(panels), width=width, height=height, max_cols=widest,
                              layout="constrained")
    drops = [c[0] for v in views for grid in v.values.values() for c in grid.values()]
    limit = max(1e-6, max(abs(d) for d in drops))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    image = None
    for ax, (view, step) in zip(axes, panels):
        n_layers, n_heads = view.shape
        grid = np.full((n_layers, n_heads), np.nan)
        sig_x, sig_y = [], []
        for (layer, head), (drop, significant, _) in view.values[step].items():
            grid[layer, head] = drop
            if significant:
                sig_x.append(head)
                sig_y.append(layer)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower",
                          vmin=-limit, vmax=limit)
        if sig_x:
            ax.scatter(sig_x, sig_y, marker="o", s=max(4.0, 120.0 / max(n_layers, n_heads)),
                       facecolors="none", edgecolors="black", linewidths=0.8)
        ax.set_xticks(range(n_heads))
        ax.set_xticklabels([str(h) for h in range(n_heads)], fontsize=6,
                           rotation=90 if n_heads > 16 else 0)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([str(i) for i in range(n_layers)], fontsize=6)
        ax.set_xlabel("head")
        ax.set_ylabel("layer (block)")
        label = plotting.model_title(inputs.model_label(view.model),
                                     inputs.mechanics_only(view.model))
        name = "base" if step == BASE_STEP else f"step {step}"
        ax.set_title(f"{label}: {name}\n{view.adapter}, "
                     f"{split_label(view.split)}", fontsize=9)
    if image is not None:
        cb = fig.colorbar(image, ax=axes, shrink=0.85)
        cb.set_label(f"{views[0].measure} drop when the head is ablated")
    fig.suptitle("Attention heads: the drop of ablating each one, base vs trained", fontsize=10)
    modes = sorted({v.mode for v in views})
    return plotting.finish(
        fig,
        FIGURE_KEY,
        "Figure: Attention-head ablation — layer × head",
        f"Drop of {views[0].measure} (unablated − ablated; red: the head helps ranking) when one "
        f"attention head is {' / '.join(m + '-ablated' for m in modes)} (zero: its output set to "
        "0; mean: to its mean output), per layer (block) and head, for the base model "
        "(\"base\": every LoRA update off, scored with the last checkpoint's head) and the "
        "trained checkpoint(s). Circles: significant drops or gains (paired per-query test, "
        "corrected over the heads of the panel).",
        _sources(views, inputs),
    )


def top_heads_table(views: list[HeadsView], inputs: ReportInputs, top: int) -> Table:
    columns: list[Column] = []
    for view in views:
        group, mech = inputs.model_label(view.model), inputs.mechanics_only(view.model)
        for step in view.steps:
            name = plotting.step_label(step)
            columns.append(Column(view.model, group, f"{name}: head", view.measure, mech,
                                  fmt="text"))
            columns.append(Column(view.model, group, f"{name}: drop", view.measure, mech,
                                  fmt="delta"))
    rows = []
    for rank in range(top):
        cells: list[Cell] = []
        for view in views:
            for step in view.steps:
                ranked = view.ranked(step)
                if rank >= len(ranked):
                    cells += [Cell(), Cell()]
                    continue
                (layer, head), drop, significant, p_adjusted = ranked[rank]
                cells.append(Cell(None, label=head_label(layer, head),
                                  extra={"layer": layer, "head": head}))
                cells.append(Cell(drop, significant=significant,
                                  extra={"delta": -drop, "p_adjusted": p_adjusted}))
        rows.append(Row(str(rank + 1), str(rank + 1), cells))
    notes = [
        (f"Drop: {views[0].measure} of the unablated model minus with the head ablated (> 0: "
         "the head helps ranking); L = layer (0-based block), H = head; \"base\": every LoRA "
         "update off, scored with the last checkpoint's head."),
        (f"{SIGNIFICANT} the change against the unablated model of the same step is "
         "significant (paired per-query test, p-value corrected over that step's heads)."),
    ]
    notes += run_notes(views, inputs, lambda v: f" ({v.mode} ablation)")
    return Table(
        key=TABLE_KEY,
        number=None,
        title="Attention heads that matter most",
        split=common_split(views),
        caption=(f"Per model and checkpoint, the {top} heads whose ablation lowers "
                 f"{views[0].measure} most."),
        row_header="Rank",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=_sources(views, inputs),
    )


def lora_line(views: list[HeadsView], inputs: ReportInputs, n: int = 3) -> str:
    """One sentence per model with a trained step: the heads whose drop grew most from the
    base model to its last ablated checkpoint."""
    parts = []
    for view in views:
        trained = [s for s in view.steps if s != BASE_STEP]
        if BASE_STEP not in view.values or not trained:
            continue
        step = trained[-1]
        best = view.lora_made_matter(step)[:n]
        at, base = view.values[step], view.values[BASE_STEP]
        heads = ", ".join(
            f"{head_label(*k)} ({d:+.3f}: {at[k][0]:+.3f} at step {step}"
            f"{' (significant)' if at[k][1] else ''}, {base[k][0]:+.3f} at the base)"
            for k, d in best)
        parts.append(f"{inputs.model_label(view.model)} (`{view.adapter}`, step {step}): "
                     f"{heads}")
    if not parts:
        return ""
    return (f"Heads LoRA made matter most ({views[0].measure} drop at the trained step "
            "minus drop at the base; significance at the trained step): " + "; ".join(parts)
            + ".")
