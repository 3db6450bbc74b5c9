"""The LoRA update anatomy section: where the update mass ``‖ΔW‖_F`` sits (layer × role, at the
last checkpoint), how it moves across checkpoints and ranks, how much of its rank each role
uses (effective rank), and whether the modules with the larger updates are the ones whose
ablation hurts (Spearman's ρ against the drops of the ``each_layer_role`` sweep).

Reads ``anatomy.parquet`` (:data:`lorascope.analyses.anatomy.ANATOMY`, one row per checkpoint and
(layer, role) module; layers are block indices 0..L-1 as in the ablations) and, for the
correlation, the heatmap sweep's rows of ``evaluations.parquet``.

Params (``params["anatomy"]``, all optional): ``adapter`` (the adapter shown per model;
default the plain-LoRA ``all``-module adapter of the highest rank), ``quantity`` (the
per-module value correlated with the drops: ``fro`` (default), ``spectral``,
``effective_rank`` or ``stable_rank``). The correlation reads ``params["heatmap"]`` (sweep,
adapter, measure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lorascope.analyses.anatomy import ANATOMY
from lorascope.report import plotting
from lorascope.report.data import LayerRoleDrops, ReportInputs, layer_role_drops
from lorascope.report.model import MECHANICS_NOTE, Cell, Column, Figure, Omitted, Row, Table
from lorascope.report.runs import AdapterSpec, model_adapters, showcase_adapter, split_order
from lorascope.report.tables import display_models, split_label

FRO_KEY = "anatomy-fro"
MASS_KEY = "anatomy-mass"
RANK_KEY = "table-anatomy-rank"
CORR_KEY = "table-anatomy-correlation"
SCATTER_KEY = "anatomy-correlation"
QUANTITY_LABELS = {
    "fro": "‖ΔW‖_F",
    "spectral": "‖ΔW‖_2",
    "effective_rank": "effective rank",
    "stable_rank": "stable rank",
}


@dataclass
class ModelAnatomy:
    """One model's anatomy rows: the shown adapter, its checkpoints, and its rank siblings
    (adapters of the same targets and variant)."""

    model: str
    spec: AdapterSpec
    rows: pd.DataFrame  # every row of the shown adapter
    siblings: list[AdapterSpec]  # same targets and variant, by rank (the shown one included)
    all_rows: pd.DataFrame  # every row of the model

    @property
    def last_step(self) -> int:
        return int(self.rows["step"].max())

    def last(self, adapter: str | None = None) -> pd.DataFrame:
        """The rows of ``adapter`` (default: the shown one) at its last checkpoint."""
        rows = self.rows if adapter is None else self.all_rows[self.all_rows["adapter"] == adapter]
        return rows[rows["step"] == rows["step"].max()]


def model_anatomies(params: Mapping[str, Any], inputs: ReportInputs) -> list[ModelAnatomy]:
    preferred = (params.get("anatomy") or {}).get("adapter")
    data = inputs.table(ANATOMY.name)
    out = []
    for model in display_models(params, inputs):
        mrows = data[data["model"] == model]
        if mrows.empty:
            continue
        specs = model_adapters(inputs, model, set(mrows["adapter"]))
        spec = showcase_adapter(specs, str(preferred) if preferred else None)
        assert spec is not None
        siblings = sorted((s for s in specs if s.targets == spec.targets
                           and s.variant == spec.variant), key=lambda s: (s.rank or 0, s.name))
        out.append(ModelAnatomy(model, spec, mrows[mrows["adapter"] == spec.name], siblings,
                                mrows))
    return out


def _roles(inputs: ReportInputs, model: str, rows: pd.DataFrame) -> list[str]:
    present = set(rows["role"])
    known = [r for r in inputs.roles(model) if r in present]
    return known + sorted(present - set(known))


def _layers(inputs: ReportInputs, model: str, rows: pd.DataFrame) -> int:
    return inputs.num_layers(model) or int(rows["layer"].max()) + 1


def items(params: Mapping[str, Any], inputs: ReportInputs
                  ) -> list[Figure | Table | Omitted]:
    """Figures ``anatomy-fro``, ``anatomy-mass``, ``anatomy-correlation`` and tables
    ``table-anatomy-rank``, ``table-anatomy-correlation`` (or one-line notes)."""
    if inputs.table(ANATOMY.name).empty:
        return [Omitted(FRO_KEY, "LoRA update anatomy not produced: "
                        f"{inputs.missing_note(ANATOMY.name, 'anatomy')}.")]
    views = model_anatomies(params, inputs)
    items: list[Figure | Table | Omitted] = [
        fro_heatmaps(views, inputs),
        mass_figure(views, inputs),
        effective_rank_table(views, inputs),
    ]
    items.extend(correlation_items(params, inputs))
    return items


def _source(inputs: ReportInputs, views: list[ModelAnatomy], what: str) -> str:
    runs = "; ".join(f"{inputs.model_label(v.model)} `{v.spec.name}`" for v in views)
    return f"`{inputs.source_path('anatomy')}`: {what}; {runs}"


# ------------------------------------------------------------------ ‖ΔW‖_F per layer x role


def fro_heatmaps(views: list[ModelAnatomy], inputs: ReportInputs) -> Figure:
    plt = plotting.plt()
    tallest = max(_layers(inputs, v.model, v.rows) for v in views)
    fig, axes = plotting.axes(plt, len(views), width=4.2, height=min(7.5, 1.6 + 0.2 * tallest))
    for ax, view in zip(axes, views):
        rows = view.last()
        roles = _roles(inputs, view.model, rows)
        n = _layers(inputs, view.model, rows)
        grid = np.full((n, len(roles)), np.nan)
        for _, r in rows.iterrows():
            if int(r["layer"]) < n:
                grid[int(r["layer"]), roles.index(r["role"])] = float(r["fro"])
        cmap = plt.get_cmap("YlOrRd").with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower",
                       vmin=0.0)
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
        if grid.size <= 120:
            for (li, ri), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(ri, li, f"{value:.2g}", ha="center", va="center", fontsize=6.5,
                            color="white" if value > 0.6 * top else "black")
        ax.set_xticks(range(len(roles)))
        ax.set_xticklabels(roles)
        ax.set_yticks(range(n))
        ax.set_yticklabels([str(i) for i in range(n)], fontsize=7)
        ax.set_xlabel("role")
        ax.set_ylabel("layer")
        label = plotting.model_title(inputs.model_label(view.model),
                                     inputs.mechanics_only(view.model))
        ax.set_title(f"{label}\n{view.spec.name}, step {view.last_step}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8).set_label("‖ΔW‖_F")
    fig.tight_layout()
    return plotting.finish(
        fig,
        FRO_KEY,
        "Figure: LoRA update norm per layer × role",
        "Frobenius norm of each module's LoRA update ΔW = s·B·A at the last checkpoint of the "
        "shown adapter (per model: the plain-LoRA adapter of the highest rank on all modules, "
        "unless the report names one), computed from the r×r factorisation without forming "
        "ΔW; grey: no LoRA module there.",
        [_source(inputs, views, "column `fro`, last checkpoint")],
    )


# ------------------------------------------------------------- mass over checkpoints, ranks


def _share(rows: pd.DataFrame, by: str) -> pd.Series:
    """Each ``by`` group's share of Σ‖ΔW‖²_F."""
    mass = rows.assign(mass=rows["fro"].astype(float) ** 2).groupby(by)["mass"].sum()
    total = float(mass.sum())
    return mass / total if total > 0 else mass * 0.0


def mass_figure(views: list[ModelAnatomy], inputs: ReportInputs) -> Figure:
    plt = plotting.plt()
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig, grid_axes = plt.subplots(len(views), 3, figsize=(13.0, 3.3 * len(views)),
                                  squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax_steps, ax_layers, ax_roles), view in zip(grid_axes, views):
        label = plotting.model_title(inputs.model_label(view.model),
                                     inputs.mechanics_only(view.model))
        n = _layers(inputs, view.model, view.rows)
        # (a) share per layer at each checkpoint of the shown adapter
        steps = sorted(int(s) for s in set(view.rows["step"]))
        grid = np.full((n, len(steps)), np.nan)
        for j, step in enumerate(steps):
            share = _share(view.rows[view.rows["step"] == step], "layer")
            for layer, value in share.items():
                if int(layer) < n:
                    grid[int(layer), j] = float(value)
        im = ax_steps.imshow(np.ma.masked_invalid(grid), cmap="Blues", aspect="auto",
                             origin="lower", vmin=0.0)
        if grid.size <= 120:
            for (li, sj), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax_steps.text(sj, li, f"{100 * value:.0f}", ha="center", va="center",
                                  fontsize=6, color="white" if value > 0.6 * np.nanmax(grid)
                                  else "black")
        ax_steps.set_xticks(range(len(steps)))
        ax_steps.set_xticklabels([plotting.step_label(s) for s in steps], fontsize=7,
                                 rotation=90 if len(steps) > 8 else 0)
        ax_steps.set_yticks(range(n))
        ax_steps.set_yticklabels([str(i) for i in range(n)], fontsize=7)
        ax_steps.set_xlabel("checkpoint step")
        ax_steps.set_ylabel("layer")
        ax_steps.set_title(f"{label}\n{view.spec.name}: share per layer (%)", fontsize=9)
        fig.colorbar(im, ax=ax_steps, shrink=0.8, format=PercentFormatter(1.0, decimals=0))
        # (b) share per layer across ranks, (c) share per role across ranks
        roles = _roles(inputs, view.model, view.all_rows)
        width = 0.8 / max(len(view.siblings), 1)
        for k, spec in enumerate(view.siblings):
            rows = view.last(spec.name)
            color = colors[k % len(colors)]
            name = f"r{spec.rank} (step {int(rows['step'].max())})"
            by_layer = _share(rows, "layer").reindex(range(n))
            ax_layers.plot(range(n), by_layer.to_numpy(), marker="o", ms=3, color=color,
                           label=name)
            by_role = _share(rows, "role").reindex(roles)
            ax_roles.bar(np.arange(len(roles)) - 0.4 + width * (k + 0.5), by_role.to_numpy(),
                         width * 0.92, color=color, label=name)
        ax_layers.set_xlabel("layer")
        ax_layers.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_layers.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax_roles.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax_layers.set_ylabel("share of Σ‖ΔW‖²_F")
        ax_layers.set_title(f"per layer across ranks ({view.spec.targets})", fontsize=9)
        ax_layers.grid(alpha=0.3)
        ax_layers.legend(fontsize=7)
        ax_roles.set_xticks(range(len(roles)))
        ax_roles.set_xticklabels(roles)
        ax_roles.set_ylabel("share of Σ‖ΔW‖²_F")
        ax_roles.set_title(f"per role across ranks ({view.spec.targets})", fontsize=9)
        ax_roles.legend(fontsize=7)
    fig.tight_layout()
    return plotting.finish(
        fig,
        MASS_KEY,
        "Figure: Where the update mass sits, over checkpoints and ranks",
        "Share of the total squared update norm Σ‖ΔW‖²_F per layer (left: at each checkpoint "
        "of the shown adapter, in %; middle: at the last checkpoint of each rank trained on "
        "the same modules with the same variant) and per role (right).",
        [_source(inputs, views, "column `fro`, every checkpoint")],
    )


# ------------------------------------------------------------------- effective rank table


def effective_rank_table(views: list[ModelAnatomy], inputs: ReportInputs) -> Table:
    columns: list[Column] = []
    for view in views:
        group, mech = inputs.model_label(view.model), inputs.mechanics_only(view.model)
        for spec in view.siblings:
            columns.append(Column(view.model, group, f"r{spec.rank}", "effective_rank", mech,
                                  fmt="rank"))
    roles: list[str] = []
    for view in views:
        roles += [r for r in _roles(inputs, view.model, view.all_rows) if r not in roles]
    rows = []
    for role in [*roles, ""]:
        cells = []
        for col in columns:
            view = next(v for v in views if v.model == col.model)
            spec = next(s for s in view.siblings if f"r{s.rank}" == col.label)
            last = view.last(spec.name)
            sel = last if role == "" else last[last["role"] == role]
            values = sel["effective_rank"].dropna()
            cells.append(Cell(float(values.mean()) if not values.empty else None,
                              extra={"adapter": spec.name, "modules": int(len(values)),
                                     "step": int(last["step"].max())}))
        rows.append(Row(role or "all roles", role or "all roles", cells))
    notes = [
        "Effective rank exp(H(p)), p_i = σ_i / Σσ_j over the singular values of ΔW (Roy & "
        "Vetterli): 1 for a rank-one update, r when all r directions are equally used; the mean "
        "over layers at each adapter's last checkpoint.",
    ]
    if any(c.mechanics_only for c in columns):
        notes.append(MECHANICS_NOTE)
    return Table(
        key=RANK_KEY,
        number=None,
        title="Effective rank of the LoRA update per role",
        split="",
        caption="How many of its r directions each role's update uses, per trained rank (same "
                "target modules and variant as the adapter shown above).",
        row_header="Role",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[_source(inputs, views, "column `effective_rank`, last checkpoints")],
    )


# --------------------------------------------------------------- correlation with the drops


@dataclass
class _Pair:
    drops: LayerRoleDrops
    values: dict[tuple[int, str], float]
    rho: float
    p_value: float
    n: int


def correlation_items(params: Mapping[str, Any], inputs: ReportInputs
                      ) -> list[Figure | Table | Omitted]:
    from lorascope.analyses.anatomy.correlation import correlate
    from lorascope.analyses.anatomy.maths import QUANTITIES

    cfg = params.get("heatmap") or None
    if cfg is None:
        return [Omitted(CORR_KEY, "Update size vs ablation drop not produced: the study has no "
                        "`each_layer_role` sweep.")]
    quantity = str((params.get("anatomy") or {}).get("quantity") or "fro")
    if quantity not in QUANTITIES:
        raise ValueError(f"report params: 'anatomy.quantity' must be one of "
                         f"{', '.join(QUANTITIES)}, got {quantity!r}")
    sweep, adapter = str(cfg["sweep"]), str(cfg.get("adapter") or "")
    measure = str(cfg.get("measure") or "nDCG@10")
    data = inputs.table(ANATOMY.name)
    pairs: dict[str, _Pair] = {}
    skipped: list[str] = []
    for model in display_models(params, inputs):
        drops = layer_role_drops(inputs, sweep, adapter, measure, model, split_order(params))
        if drops is None or not drops.cells:
            continue
        rows = data[(data["model"] == model) & (data["adapter"] == adapter)
                    & (data["step"] == drops.step)]
        if rows.empty:
            skipped.append(f"{inputs.model_label(model)} (no anatomy of `{adapter}` at step "
                           f"{drops.step})")
            continue
        values = {(int(r["layer"]), str(r["role"])): float(r[quantity])
                  for _, r in rows.iterrows() if not pd.isna(r[quantity])}
        result = correlate(values, {k: d for k, (d, _) in drops.cells.items()},
                           measure=measure, quantity=quantity)
        pairs[model] = _Pair(drops, values, result.rho, result.p_value, result.n)
    if not pairs:
        why = ("; ".join(skipped) if skipped else
               f"no single-module ablations of `{adapter}` in sweep `{sweep}`")
        return [Omitted(CORR_KEY, f"Update size vs ablation drop not produced: {why}.")]
    return [correlation_table(pairs, inputs, quantity, sweep, skipped),
            correlation_scatter(pairs, inputs, quantity)]


def correlation_table(pairs: dict[str, _Pair], inputs: ReportInputs, quantity: str,
                      sweep: str, skipped: list[str]) -> Table:
    columns = [
        Column("", "Run", "adapter", "", fmt="text"),
        Column("", "Run", "step", "", fmt="int"),
        Column("", "Run", "split", "", fmt="text"),
        Column("", "Spearman", "ρ", "", fmt="delta"),
        Column("", "Spearman", "p", "", fmt="p"),
        Column("", "Spearman", "n", "", fmt="int"),
    ]
    rows = []
    for model, pair in pairs.items():
        d = pair.drops
        rows.append(Row(model, inputs.model_label(model), [
            Cell(label=d.adapter), Cell(float(d.step)), Cell(label=split_label(d.split)),
            Cell(pair.rho), Cell(pair.p_value), Cell(float(pair.n)),
        ], mechanics_only=inputs.mechanics_only(model)))
    measure = next(iter(pairs.values())).drops.measure
    notes = [
        f"ρ: Spearman's rank correlation over the (layer, role) modules between "
        f"{QUANTITIES_TEXT.get(quantity, quantity)} and the drop in {measure} when that module "
        "alone is zeroed (full − ablated); ρ > 0: larger updates matter more. "
        "`lorascope.analyses.anatomy.correlation.correlate`; blank when fewer than 3 modules or a constant side.",
    ]
    if skipped:
        notes.append("Not correlated: " + "; ".join(skipped) + ".")
    if any(inputs.mechanics_only(m) for m in pairs):
        notes.append(MECHANICS_NOTE)
    return Table(
        key=CORR_KEY,
        number=None,
        title=f"Update size vs ablation drop ({QUANTITY_LABELS.get(quantity, quantity)})",
        split="",
        caption=f"Does the size of a module's LoRA update predict how much zeroing it costs? "
                f"Per model, the modules of the `{sweep}` sweep at its checkpoint.",
        row_header="Model",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[f"`{inputs.source_path('anatomy')}`: column `{quantity}`",
                 f"`{inputs.source_path('evaluations')}`: sweep `{sweep}`, measure `{measure}`"],
    )


QUANTITIES_TEXT = {
    "fro": "the update's Frobenius norm ‖ΔW‖_F",
    "spectral": "the update's spectral norm ‖ΔW‖_2",
    "effective_rank": "the update's effective rank",
    "stable_rank": "the update's stable rank",
}


def correlation_scatter(pairs: dict[str, _Pair], inputs: ReportInputs, quantity: str) -> Figure:
    plt = plotting.plt()
    fig, axes = plotting.axes(plt, len(pairs), width=4.6, height=3.2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    measure = next(iter(pairs.values())).drops.measure
    for ax, (model, pair) in zip(axes, pairs.items()):
        common = sorted(set(pair.values) & set(pair.drops.cells))
        roles = [r for r in inputs.roles(model) if any(c[1] == r for c in common)]
        roles += sorted({c[1] for c in common} - set(roles))
        for k, role in enumerate(roles):
            pts = [(pair.values[c], pair.drops.cells[c][0]) for c in common if c[1] == role]
            ax.scatter(*zip(*pts), s=16, color=colors[k % len(colors)], label=role, alpha=0.85)
        xs = [pair.values[c] for c in common]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 30:
            ax.set_xscale("log")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(QUANTITY_LABELS.get(quantity, quantity))
        ax.set_ylabel(f"drop in {measure}")
        rho = "–" if np.isnan(pair.rho) else f"{pair.rho:+.2f}"
        p = "–" if np.isnan(pair.p_value) else f"{pair.p_value:.3g}"
        label = plotting.model_title(inputs.model_label(model), inputs.mechanics_only(model))
        ax.set_title(f"{label}\nρ = {rho}, p = {p}, n = {pair.n}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                  title="role", title_fontsize=7)
    fig.tight_layout()
    return plotting.finish(
        fig,
        SCATTER_KEY,
        "Figure: Update size vs ablation drop",
        f"One point per (layer, role) module: its {QUANTITY_LABELS.get(quantity, quantity)} "
        f"(x) against the drop in {measure} when it alone is zeroed (y), coloured by role; "
        "Spearman's ρ in each title.",
        [f"`{inputs.source_path('anatomy')}`: column `{quantity}`; "
         f"`{inputs.source_path('evaluations')}`: the per-(layer, role) sweep"],
    )
