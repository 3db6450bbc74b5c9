"""The report's figures, drawn with matplotlib (imported lazily, ``Agg`` backend).

Figures of the tables are drawn from the built :class:`Table` objects, so a figure can never
disagree with its table: learning curves (Table 1), rank comparison with convergence steps
(Table 2), grouped bars of the ablations (Tables 3 and 4). The others read the summary:
the layer x role heatmap of an ``each_layer_role`` sweep (drop against the full adapter per
cell) and the training loss curves. The analyses' figures live with their tables in their
``report`` modules (:mod:`lorascope.analyses`).

Every builder returns a :class:`Figure` with PNG and PDF bytes, or an :class:`Omitted`.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np

from lorascope.report import plotting
from lorascope.report.data import ReportInputs, layer_role_drops
from lorascope.report.model import SIGNIFICANT, Figure, Omitted, Table
from lorascope.report.tables import BM25_KEY, display_models, split_label

# ----------------------------------------------------------------- learning curves (Table 1)


def _first_stage(table: Table) -> str:
    """What ranked the table's split first: ``BM25``, or the run a split was given (from the
    first-stage row's label)."""
    row = next((r for r in table.rows if r.key == BM25_KEY), None)
    label = row.label if row is not None else ""
    return label.removesuffix(" (first stage)") or "BM25"


def learning_curves(table: Table) -> Figure | Omitted:
    """Metric vs checkpoint step per model, first stage dashed, paper values as open marks."""
    plt = plotting.plt()
    models: list[str] = []
    for c in table.columns:
        if c.model not in models:
            models.append(c.model)
    step_rows = [r for r in table.rows if not r.baseline]
    baseline = next((r for r in table.rows if r.baseline), None)
    fig, axes = plotting.axes(plt, len(models))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps = [int(r.key) for r in step_rows]
    use_log = steps and min(steps) > 0 and max(steps) / min(steps) >= 20
    for ax, model in zip(axes, models):
        cols = [(i, c) for i, c in enumerate(table.columns) if c.model == model]
        measures = [c for _, c in cols if not c.paper]
        for k, col in enumerate(measures):
            color = colors[k % len(colors)]
            i = table.columns.index(col)
            xs = [int(r.key) for r in step_rows if r.cells[i].value is not None]
            ys = [r.cells[i].value for r in step_rows if r.cells[i].value is not None]
            ax.plot(xs, ys, marker="o", ms=3.5, color=color, label=col.label)
            if baseline is not None and baseline.cells[i].value is not None:
                ax.axhline(baseline.cells[i].value, color=color, ls="--", lw=1, alpha=0.8)
            for j, pc in cols:
                if pc.paper and pc.measure == col.measure:
                    pts = [(int(r.key), r.cells[j].value) for r in step_rows
                           if r.cells[j].value is not None]
                    if pts:
                        ax.plot(*zip(*pts), ls="none", marker="D", mfc="none", color=color,
                                ms=5, label=f"{col.label} (paper)")
        first = cols[0][1]
        ax.set_title(plotting.model_title(first.group, first.mechanics_only))
        ax.set_xlabel("training step")
        ax.set_ylabel("score")
        if use_log:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(steps)
        ax.set_xticklabels([str(s) for s in steps], fontsize=7,
                           rotation=90 if len(steps) > 8 else 0)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="lower center",
               ncol=min(6, len(handles)), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Relevance over checkpoints — {split_label(table.split)} "
                 f"(dashed: {_first_stage(table)} first stage)", fontsize=10)
    rows_ = plotting.grid(len(models))[0]
    fig.tight_layout(rect=(0, 0.1 / rows_ + (0.04 if len(handles) > 6 else 0), 1, 1))
    paper = "; open diamonds: the paper's values." if any(c.paper for c in table.columns) else "."
    return plotting.finish(
        fig,
        f"learning-curves-{plotting.slug(table.split)}",
        f"Figure: Metric vs training step ({split_label(table.split)})",
        f"Table 1 as curves, one panel per model ({split_label(table.split)}); dashed lines: "
        f"the first-stage ({_first_stage(table)}) level of the same measure" + paper,
        table.sources,
    )


# ------------------------------------------------------------------ rank comparison (Table 2)


def rank_comparison(table: Table) -> Figure | Omitted:
    plt = plotting.plt()
    groups = []
    for c in table.columns:
        if not c.paper and c.model not in [g.model for g in groups]:
            groups.append(c)
    rank_rows = [r for r in table.rows if not r.baseline]
    baseline = next((r for r in table.rows if r.baseline), None)
    n_ranks = len(rank_rows)
    # wide enough for both the bars and one (wrapped) model label per group
    fig_width = max(5.0, 1.6 * len(groups) * max(n_ranks, 1) / 2.5, 1.9 * len(groups))
    fig, ax = plt.subplots(figsize=(fig_width, 3.6))
    width = 0.8 / max(n_ranks, 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paper_label_done = False
    for k, row in enumerate(rank_rows):
        for g, col in enumerate(groups):
            i = table.columns.index(col)
            cell = row.cells[i]
            x = g - 0.4 + width * (k + 0.5)
            if cell.value is not None:
                ax.bar(x, cell.value, width * 0.92, color=colors[k % len(colors)],
                       label=f"rank {row.label}" if g == 0 else None)
                if cell.step is not None:
                    ax.text(x, cell.value + 0.01, f"({cell.step})", ha="center", va="bottom",
                            fontsize=6.5, rotation=90 if n_ranks * len(groups) > 12 else 0)
            for j, pc in enumerate(table.columns):
                if pc.paper and pc.model == col.model and row.cells[j].value is not None:
                    ax.plot(x, row.cells[j].value, marker="_", color="black", ms=12, mew=2,
                            label=None if paper_label_done else "paper")
                    paper_label_done = True
        if k == 0 and baseline is not None:
            for g, col in enumerate(groups):
                v = baseline.cells[table.columns.index(col)].value
                if v is not None:
                    ax.hlines(v, g - 0.45, g + 0.45, colors="grey", linestyles="--", lw=1,
                              label=_first_stage(table) if g == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [textwrap.fill(plotting.model_title(c.group, c.mechanics_only), 18) for c in groups],
        fontsize=8,
    )
    ax.set_ylabel(groups[0].measure if groups else "")
    top = max([c.value for r in table.rows for c in r.cells if c.value is not None] + [0.1])
    ax.set_ylim(0, min(1.0, top * 1.18) if top <= 1 else top * 1.18)
    ax.legend(fontsize=7, ncol=min(6, n_ranks + 2), loc="upper center",
              bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.set_title(f"LoRA rank at the convergence step — {split_label(table.split)} "
                 "(convergence step in parentheses)")
    fig.tight_layout()
    return plotting.finish(
        fig,
        f"rank-comparison-{plotting.slug(table.split)}",
        f"Figure: LoRA rank comparison ({split_label(table.split)})",
        f"Table 2 as bars ({split_label(table.split)}): {groups[0].measure if groups else ''} "
        "per LoRA rank at the convergence step, printed above each bar; dashed: "
        f"{_first_stage(table)}.",
        table.sources,
    )


# ------------------------------------------------------------- ablation bars (Tables 3, 4)


def ablation_bars(table: Table) -> Figure | Omitted:
    """Grouped bars: one panel per measure, models on the x axis, one bar per table row."""
    plt = plotting.plt()
    measures: list[str] = []
    for c in table.columns:
        if not c.paper and c.measure not in measures:
            measures.append(c.measure)
    rows = [r for r in table.rows if not r.baseline]
    baseline = next((r for r in table.rows if r.baseline), None)
    models = []
    for c in table.columns:
        if c.model not in [m.model for m in models]:
            models.append(c)
    fig, axes = plotting.axes(plt, len(measures),
                              width=max(4.5, 1.2 * len(models) * len(rows) / 2.5),
                      height=3.4, max_cols=2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(rows), 1)
    for ax, measure in zip(axes, measures):
        for k, row in enumerate(rows):
            for g, mc in enumerate(models):
                i = next((i for i, c in enumerate(table.columns)
                          if c.model == mc.model and c.measure == measure and not c.paper), None)
                if i is None or row.cells[i].value is None:
                    continue
                x = g - 0.4 + width * (k + 0.5)
                cell = row.cells[i]
                ax.bar(x, cell.value, width * 0.92, color=colors[k % len(colors)],
                       label=row.label if g == 0 else None)
                if cell.significant:
                    ax.text(x, cell.value + 0.005, SIGNIFICANT, ha="center", va="bottom",
                            fontsize=8)
                j = next((j for j, c in enumerate(table.columns)
                          if c.model == mc.model and c.measure == measure and c.paper), None)
                if j is not None and row.cells[j].value is not None:
                    ax.plot(x, row.cells[j].value, marker="_", color="black", ms=10, mew=2)
        if baseline is not None:
            for g, mc in enumerate(models):
                i = next((i for i, c in enumerate(table.columns)
                          if c.model == mc.model and c.measure == measure and not c.paper), None)
                if i is not None and baseline.cells[i].value is not None:
                    ax.hlines(baseline.cells[i].value, g - 0.45, g + 0.45, colors="grey",
                              linestyles="--", lw=1,
                              label=_first_stage(table) if g == 0 else None)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([plotting.model_title(m.group, m.mechanics_only) for m in models],
                           fontsize=8)
        ax.set_ylabel(measure)
        ax.set_title(measure)
    handles, labels = axes[0].get_legend_handles_labels() if axes else ([], [])
    if any(c.paper for c in table.columns):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="black", marker="_", ls="none", ms=10, mew=2))
        labels.append("paper")
    fig.legend(handles, labels, fontsize=7, ncol=min(6, len(labels)), loc="lower center",
               bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle(f"{table.title}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return plotting.finish(
        fig,
        f"table{table.number}-bars-{plotting.slug(table.split)}",
        f"Figure: {table.title.split(': ', 1)[-1]}",
        f"Table {table.number} as bars ({split_label(table.split)}); {SIGNIFICANT}: "
        f"significant change vs the full adapter; dashed: {_first_stage(table)}"
        + ("; black ticks: the paper's values." if any(c.paper for c in table.columns) else "."),
        table.sources,
    )


# -------------------------------------------------------------------- layer x role heatmap


def heatmaps(params: Mapping[str, Any], inputs: ReportInputs) -> list[Figure | Omitted]:
    cfg = params.get("heatmap") or None
    if cfg is None:
        return [Omitted("heatmap", "Layer × role heatmap not produced: the study has no "
                        "`each_layer_role` sweep.")]
    sweep, adapter = str(cfg["sweep"]), str(cfg.get("adapter") or "")
    measure = str(cfg.get("measure") or "nDCG@10")
    ev = inputs.evaluations
    ev = ev[(ev["sweep"] == sweep) & (ev["adapter"] == adapter) & (ev["measure"] == measure)]
    if ev.empty:
        what = "has no" if not inputs.has_sweep(sweep) else "has no rows of the"
        return [Omitted("heatmap", f"Layer × role heatmap not produced: the study {what} "
                        f"`{sweep}` sweep (adapter `{adapter}`, measure `{measure}`).")]
    plt = plotting.plt()
    from matplotlib.colors import TwoSlopeNorm

    preferred = [params.get("main_split") or ""] + list(params.get("companion_splits") or [])
    out: list[Figure | Omitted] = []
    for model in display_models(params, inputs):
        found = layer_role_drops(inputs, sweep, adapter, measure, model, preferred)
        if found is None:
            continue
        split, full_value, cells = found.split, found.full_value, found.cells
        if not cells:
            out.append(Omitted(f"heatmap-{plotting.slug(model)}", f"Layer × role heatmap of "
                               f"{inputs.model_label(model)} not produced: no single-module "
                               f"ablations in sweep `{sweep}`."))
            continue
        roles = inputs.roles(model) or sorted({r for _, r in cells})
        roles = [r for r in roles if any(rr == r for _, rr in cells)] or roles
        n_layers = inputs.num_layers(model) or (max(layer for layer, _ in cells) + 1)
        grid = np.full((n_layers, len(roles)), np.nan)
        sig = np.zeros_like(grid, dtype=bool)
        for (layer, role), (drop, s) in cells.items():
            if role in roles and layer < n_layers:
                grid[layer, roles.index(role)] = drop
                sig[layer, roles.index(role)] = s
        span = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        span = span or 1e-6
        height = min(7.5, 1.4 + 0.2 * n_layers)
        fig, ax = plt.subplots(figsize=(2.4 + 0.8 * len(roles), height))
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto",
                       norm=TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span), origin="lower")
        ax.set_xticks(range(len(roles)))
        ax.set_xticklabels(roles)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([str(i) for i in range(n_layers)], fontsize=7)
        ax.set_xlabel("role")
        ax.set_ylabel("layer")
        annotate = grid.size <= 120
        for (li, ri), value in np.ndenumerate(grid):
            if np.isnan(value):
                continue
            text = f"{value + 0.0:.3f}".replace("-0.000", "0.000") if annotate else ""
            text += SIGNIFICANT if sig[li, ri] else ""
            if text:
                ax.text(ri, li, text, ha="center", va="center", fontsize=6.5,
                        color="white" if abs(value) > 0.6 * span else "black")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_label(f"drop in {measure} vs full")
        label = plotting.model_title(inputs.model_label(model), inputs.mechanics_only(model))
        ax.set_title(f"{label}\n{split_label(split)}, adapter {adapter}", fontsize=9)
        fig.tight_layout()
        full_txt = f" (full adapter: {full_value:.4f})" if full_value is not None else ""
        out.append(plotting.finish(
            fig,
            f"heatmap-{plotting.slug(model)}",
            f"Figure: Layer × role heatmap — {inputs.model_label(model)}",
            f"Drop in {measure} on {split_label(split)} when one (layer, role) LoRA module of "
            f"`{adapter}` is zeroed{full_txt}; red: the module helps, blue: removing it "
            f"helps, grey: not trained; {SIGNIFICANT}: significant.",
            [f"`{inputs.source_path('evaluations')}`: sweep `{sweep}`, adapter `{adapter}`, "
             f"split `{split}`, measure `{measure}`"],
        ))
    return out


# ------------------------------------------------------------------------ training loss


def training_loss(params: Mapping[str, Any], inputs: ReportInputs) -> Figure | Omitted:
    log = inputs.training_log
    if log.empty:
        return Omitted("training-loss", "Training loss curves not produced: no training log.")
    models = [m for m in display_models(params, inputs) if m in set(log["model"])]
    plt = plotting.plt()
    fig, axes = plotting.axes(plt, len(models), width=4.0, height=2.9)
    for ax, model in zip(axes, models):
        mlog = log[log["model"] == model]
        adapters = sorted(set(mlog["adapter"]), key=_adapter_order)
        for adapter in adapters:
            run = mlog[mlog["adapter"] == adapter].sort_values("step")
            if len(run) > 60:
                line, = ax.plot(run["step"], run["loss"], lw=0.6, alpha=0.3)
                smooth = run["loss"].rolling(max(3, len(run) // 30), min_periods=1).mean()
                ax.plot(run["step"], smooth, lw=1.3, color=line.get_color(), label=adapter)
            else:
                ax.plot(run["step"], run["loss"], lw=1.2, marker=".", ms=3, label=adapter)
        ax.set_title(plotting.model_title(inputs.model_label(model), inputs.mechanics_only(model)))
        ax.set_xlabel("training step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training loss (group cross-entropy)", fontsize=10)
    fig.tight_layout()
    return plotting.finish(
        fig,
        "training-loss",
        "Figure: Training loss",
        "Training loss per step of every run (a rolling mean over long logs; the raw loss "
        "faint).",
        [f"`{inputs.source_path('training_log')}`"],
    )


def _adapter_order(name: str) -> tuple:
    m = re.match(r"^r(\d+)-(.*)$", name)
    return (m.group(2), int(m.group(1))) if m else (name, 0)
