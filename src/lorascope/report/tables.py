"""The paper's four tables built as data (:class:`~lorascope.report.model.Table`) from the
study summary: Table 1 (metrics per checkpoint step), Table 2 (nDCG@10 per LoRA rank at the
convergence step), Table 3 (component ablations), Table 4 (layer / projection ablations).

Each builder returns a :class:`Table`, or an :class:`Omitted` with a one-line reason when the
study has no results for it. Every table has the first-stage (BM25) row, marks significant
changes against the full adapter, names its split, and, when the study's reference applies to
the split, puts the published values in a ``paper`` column beside each reproduced one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from lorascope.core.names import CHECKPOINTS, FIRST_STAGE, FULL, RANDOM, ZERO_SHOT
from lorascope.report.data import ReportInputs, reference_applies
from lorascope.report.model import (
    MECHANICS_NOTE,
    SIGNIFICANCE_NOTE,
    SIGNIFICANT,
    Cell,
    Column,
    Omitted,
    Row,
    Table,
)
from lorascope.report.runs import measure_pairs

BM25_KEY = FIRST_STAGE
BM25_LABEL = "BM25 (first stage)"
RANDOM_KEY = RANDOM
ZERO_SHOT_LABEL = "Base model zero-shot (its own ranking, no LoRA)"


def baseline_rows(
    inputs: ReportInputs, split: str, columns: Sequence[Column], measure: str | None = None
) -> list[Row]:
    """The first-stage row and, where the summary has it, the random-reordering floor."""

    def cells(ablation: str) -> list[Cell]:
        return [
            Cell() if c.paper else Cell(inputs.first_stage(split, measure or c.measure, ablation))
            for c in columns
        ]

    rows = [Row(BM25_KEY, first_stage_label(inputs, split), cells(BM25_KEY), baseline=True)]
    floor = cells(RANDOM_KEY)
    if any(cell.value is not None for cell in floor):
        depth = inputs.split_info(split).get("depth")
        label = f"Random reordering of the top-{depth}" if depth else "Random reordering"
        rows.append(Row(RANDOM_KEY, label, floor, baseline=True))
    own = [Cell() if c.paper else Cell(inputs.zero_shot(c.model, split, measure or c.measure))
           for c in columns]
    if any(cell.value is not None for cell in own):
        rows.append(Row(ZERO_SHOT, ZERO_SHOT_LABEL, own, baseline=True))
    return rows

TITLES = {
    1: "Relevance emerging over checkpoints",
    2: "Effect of LoRA rank",
    3: "MHA vs MLP updates",
    4: "Layer and projection ablations",
}


# ------------------------------------------------------------------------------- helpers


def split_label(split: str) -> str:
    """``dl19`` -> ``DL19``; other split names stay as they are."""
    return split.upper() if re.fullmatch(r"dl\d\d", split) else split


def first_stage_name(inputs: ReportInputs, split: str) -> str:
    """What ranked the split's candidates: BM25 (the embedded lists, ir_datasets scoreddocs)
    or the run file a split was given (``run <file name>``)."""
    return str(inputs.split_info(split).get("first_stage") or "BM25")


def first_stage_label(inputs: ReportInputs, split: str) -> str:
    """The first-stage row's label: ``BM25 (first stage)`` unless the split came from a run."""
    name = first_stage_name(inputs, split)
    return BM25_LABEL if name == "BM25" else f"{name} (first stage)"


def split_description(split: str, inputs: ReportInputs) -> str:
    info = inputs.split_info(split)
    parts = []
    if info.get("dataset"):
        parts.append(f"dataset `{info['dataset']}`")
    queries = inputs.split_queries(split)
    if queries is not None:
        parts.append(f"{queries} judged queries")
    if info.get("depth"):
        parts.append(f"{first_stage_name(inputs, split)} top-{info['depth']} reranked")
    return f"{split_label(split)} ({', '.join([f'split `{split}`'] + parts)})"


def display_models(params: Mapping[str, Any], inputs: ReportInputs) -> list[str]:
    """Models in display order: the params' order, then any other model with results."""
    order = [str(m) for m in params.get("models") or []]
    seen = set(order)
    extra = sorted(
        (set(inputs.evaluations["model"]) | set((inputs.study.get("models") or {}))) - seen - {""}
    )
    return order + extra


def _ev_index(frame: pd.DataFrame) -> dict[tuple, pd.Series]:
    """(model, step, ablation, measure) -> row of an already filtered evaluations frame."""
    index: dict[tuple, pd.Series] = {}
    for _, row in frame.iterrows():
        index[(row["model"], int(row["step"]), row["ablation"], row["measure"])] = row
    return index


def _value(row: pd.Series | None) -> float | None:
    if row is None or pd.isna(row["value"]):
        return None
    return float(row["value"])


def _cell(row: pd.Series | None, *, step: int | None = None, mark: bool = True) -> Cell:
    if row is None:
        return Cell()
    extra = {
        k: (None if pd.isna(row[k]) else row[k])
        for k in ("delta", "p_value", "p_adjusted", "queries")
        if k in row
    }
    return Cell(
        value=_value(row),
        step=step,
        significant=bool(row["significant"]) and mark and row["ablation"] != FULL,
        extra=extra,
    )


def _title(number: int, split: str, companion: bool) -> str:
    title = f"Table {number}: {TITLES[number]} — {split_label(split)}"
    return title + (" (companion)" if companion else "")


def _key(number: int, split: str, companion: bool) -> str:
    return f"table{number}" + (f"_{split}" if companion else "")


def _missing_models(models: Sequence[str], shown: Sequence[str], inputs: ReportInputs) -> list[str]:
    asked = _asked(inputs, models)
    missing = [inputs.model_label(m) for m in models if m not in shown and m in asked]
    return [f"No results for {', '.join(missing)} in this table."] if missing else []


def _asked(inputs: ReportInputs, models: Sequence[str]) -> set[str]:
    """Models the study itself has (those only in params but not in the study are skipped)."""
    known = set((inputs.study.get("models") or {})) | set(inputs.evaluations["model"])
    return {m for m in models if m in known}


def _common_notes(table: Table, inputs: ReportInputs, *, ablation_table: bool) -> None:
    if any(c.mechanics_only for c in table.columns):
        table.notes.append(MECHANICS_NOTE)
    marked = any(cell.significant for row in table.rows for cell in row.cells)
    if marked:
        table.notes.append(SIGNIFICANCE_NOTE)
    elif ablation_table:
        table.notes.append("No change against the full adapter is significant.")
    if any(c.paper for c in table.columns):
        table.notes.append(
            "Columns headed paper: the published value (DL19) of the reproduced column to their "
            "left; the paper's MAP and MRR are compared with `AP(rel=2)` and `RR(rel=2)`."
        )


def _reference_part(
    reference: Mapping[str, Any] | None,
    number: int,
    split: str,
    inputs: ReportInputs,
    adapter_key: str,
    adapter: str,
    notes: list[str],
) -> dict[str, Any]:
    """The reference values of table ``number`` if they apply to this split and adapter."""
    if not reference or not reference_applies(dict(reference), split, inputs):
        return {}
    part = reference.get(f"table{number}") or {}
    wanted = part.get(adapter_key)
    if wanted is not None and str(wanted) != str(adapter):
        notes.append(
            f"Paper values not shown: this table reads `{adapter}`, the paper's "
            f"{adapter_key} is `{wanted}`."
        )
        return {}
    return dict(part.get("values") or {})


# ------------------------------------------------------------------------------- Table 1


def build_table1(
    params: Mapping[str, Any],
    inputs: ReportInputs,
    reference: Mapping[str, Any] | None,
    split: str,
    companion: bool = False,
) -> Table | Omitted:
    cfg = params.get("table1") or None
    key = _key(1, split, companion)
    if cfg is None:
        return Omitted(key, "Table 1 not produced: the report configures no checkpoint table.")
    adapter = str(cfg.get("adapter") or "")
    measures = measure_pairs(cfg.get("measures"))
    ev = inputs.evaluations
    ev = ev[
        (ev["sweep"] == CHECKPOINTS)
        & (ev["ablation"] == FULL)
        & (ev["adapter"] == adapter)
        & (ev["split"] == split)
        & ev["measure"].isin([m for _, m in measures])
    ]
    if ev.empty:
        return Omitted(
            key,
            f"Table 1 ({split_label(split)}) not produced: no `{CHECKPOINTS}` evaluations of "
            f"adapter `{adapter}` on split `{split}`.",
        )
    order = display_models(params, inputs)
    models = [m for m in order if m in set(ev["model"])]
    notes: list[str] = []
    ref = _reference_part(reference, 1, split, inputs, "adapter", adapter, notes)
    index = _ev_index(ev)

    columns: list[Column] = []
    for model in models:
        group, mech = inputs.model_label(model), inputs.mechanics_only(model)
        for label, measure in measures:
            columns.append(Column(model, group, label, measure, mech))
            if model in ref:
                columns.append(Column(model, group, "paper", measure, mech, paper=True))

    steps = set(int(s) for s in ev["step"])
    for model in models:
        steps |= {int(s) for s in (ref.get(model) or {})}
    rows = baseline_rows(inputs, split, columns)
    last_only = not ref and all(ev[ev["model"] == m]["step"].nunique() == 1 for m in models)
    if last_only and len(steps) > 1:
        # a split evaluated at each run's last checkpoint only (evaluation.final_splits):
        # one row, each model at its own last step (in parentheses)
        last = {m: int(ev[ev["model"] == m]["step"].iloc[0]) for m in models}
        cells = [_cell(index.get((c.model, last[c.model], FULL, c.measure)), step=last[c.model])
                 for c in columns]
        rows.append(Row("last", "Last checkpoint", cells))
        notes.append(f"`{split}` is evaluated at the last checkpoint of each run only (its "
                     "step in parentheses); the curves are on the split every checkpoint is "
                     "evaluated on.")
        steps = set()
    for step in sorted(steps):
        cells = []
        for c in columns:
            if c.paper:
                value = ((ref.get(c.model) or {}).get(step) or {}).get(c.measure)
                cells.append(Cell(None if value is None else float(value), paper=True))
            else:
                cells.append(_cell(index.get((c.model, step, FULL, c.measure))))
        rows.append(Row(str(step), str(step), cells))

    measure_names = " / ".join(label for label, _ in measures)
    table = Table(
        key=key,
        number=1,
        title=_title(1, split, companion),
        split=split,
        caption=(
            f"{measure_names} of the full adapter `{adapter}` at each checkpoint step on "
            f"{split_description(split, inputs)}."
        ),
        row_header="Step",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('evaluations')}`: sweep `{CHECKPOINTS}`, ablation `{FULL}`, "
            f"adapter `{adapter}`, split `{split}`, measures "
            + ", ".join(f"`{m}`" for _, m in measures)
        ],
        companion=companion,
    )
    table.notes.extend(_missing_models(order, models, inputs))
    _common_notes(table, inputs, ablation_table=False)
    return table


# ------------------------------------------------------------------------------- Table 2


def _convergence(inputs: ReportInputs, model: str, adapter: str, measure: str) -> pd.Series | None:
    conv = inputs.convergence
    rows = conv[(conv["model"] == model) & (conv["adapter"] == adapter)]
    if rows.empty:
        return None
    same = rows[rows["measure"] == measure]
    return (same if not same.empty else rows).iloc[0]


def build_table2(
    params: Mapping[str, Any],
    inputs: ReportInputs,
    reference: Mapping[str, Any] | None,
    split: str,
    companion: bool = False,
) -> Table | Omitted:
    cfg = params.get("table2") or None
    key = _key(2, split, companion)
    if cfg is None:
        return Omitted(key, "Table 2 not produced: the report configures no rank table.")
    targets = str(cfg.get("targets") or "all")
    measure = str(cfg.get("measure") or "nDCG@10")
    ev = inputs.evaluations
    ev = ev[
        (ev["sweep"] == CHECKPOINTS)
        & (ev["ablation"] == FULL)
        & (ev["targets"] == targets)
        & (ev["split"] == split)
        & (ev["measure"] == measure)
        & ev["variant"].isin(["", "lora"])  # plain LoRA: variants have their own table
    ]
    if ev.empty:
        return Omitted(
            key,
            f"Table 2 ({split_label(split)}) not produced: no `{CHECKPOINTS}` evaluations of "
            f"`{targets}` adapters on split `{split}`.",
        )
    order = display_models(params, inputs)
    models = [m for m in order if m in set(ev["model"])]
    notes: list[str] = []
    ref = _reference_part(reference, 2, split, inputs, "targets", targets, notes)
    if ref and str((reference or {}).get("table2", {}).get("measure", measure)) != measure:
        ref = {}

    columns: list[Column] = []
    for model in models:
        group, mech = inputs.model_label(model), inputs.mechanics_only(model)
        if model in ref:
            columns.append(Column(model, group, "reproduced", measure, mech))
            columns.append(Column(model, group, "paper", measure, mech, paper=True))
        else:
            columns.append(Column(model, group, measure, measure, mech))

    # (model, rank) -> adapter; ranks from the data and the reference
    adapters: dict[tuple[str, int], str] = {}
    for (model, adapter), rows_ in ev.groupby(["model", "adapter"]):
        adapters[(model, int(rows_["rank"].iloc[0]))] = adapter
    ranks = {rank for _, rank in adapters}
    for model in models:
        ranks |= {int(r) for r in (ref.get(model) or {})}

    rows = baseline_rows(inputs, split, columns, measure)
    fallback: list[str] = []
    late: list[str] = []
    epsilons, conv_splits, conv_measures = set(), set(), set()
    for rank in sorted(ranks):
        cells = []
        for c in columns:
            if c.paper:
                entry = (ref.get(c.model) or {}).get(rank)
                if entry is None:
                    cells.append(Cell(paper=True))
                else:
                    cells.append(
                        Cell(float(entry["value"]), step=int(entry["step"]), paper=True)
                    )
                continue
            adapter = adapters.get((c.model, rank))
            if adapter is None:
                cells.append(Cell())
                continue
            conv = _convergence(inputs, c.model, adapter, measure)
            if conv is None or pd.isna(conv["convergence_step"]):
                run = ev[(ev["model"] == c.model) & (ev["adapter"] == adapter)]
                step = int(run["step"].max())
                fallback.append(f"{inputs.model_label(c.model)} `{adapter}`")
            else:
                step = int(conv["convergence_step"])
                epsilons.add(float(conv["epsilon"]))
                conv_splits.add(str(conv["split"]))
                conv_measures.add(str(conv["measure"]))
            run = ev[(ev["model"] == c.model) & (ev["adapter"] == adapter)]
            hit = run[run["step"] == step]
            if hit.empty:  # only the last checkpoint is evaluated on this split
                last = int(run["step"].max())
                hit = run[run["step"] == last]
                late.append(f"{inputs.model_label(c.model)} `{adapter}` (converged at {step}, "
                            f"shown at {last})")
                step = last
            cells.append(_cell(hit.iloc[0], step=step))
        rows.append(Row(str(rank), str(rank), cells))

    if conv_splits:
        eps = ", ".join(f"{e:g}" for e in sorted(epsilons))
        notes.insert(
            0,
            "In parentheses: the convergence step, the first checkpoint whose "
            f"{'/'.join(sorted(conv_measures))} on `{'`, `'.join(sorted(conv_splits))}` is "
            f"within ε = {eps} of the run's best checkpoint.",
        )
    if late:
        notes.append(
            f"Not evaluated on `{split}` at the convergence step (`{split}` has each run's last "
            "checkpoint only), so the last checkpoint is shown: " + "; ".join(late) + "."
        )
    if fallback:
        notes.append(
            "No convergence record (the last checkpoint is shown, its step in parentheses): "
            + ", ".join(fallback) + "."
        )
    table = Table(
        key=key,
        number=2,
        title=_title(2, split, companion),
        split=split,
        caption=(
            f"{measure} of the full `{targets}`-module adapter per LoRA rank at its convergence "
            f"step on {split_description(split, inputs)}."
        ),
        row_header="Rank",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('evaluations')}`: sweep `{CHECKPOINTS}`, ablation `{FULL}`, "
            f"adapters `r<rank>-{targets}`, split `{split}`, measure `{measure}`",
            f"`{inputs.source_path('convergence')}`: convergence step per (model, adapter)",
        ],
        companion=companion,
    )
    table.notes.extend(_missing_models(order, models, inputs))
    _common_notes(table, inputs, ablation_table=False)
    return table


# --------------------------------------------------------------------------- Tables 3, 4


def _sweeps(cfg: Mapping[str, Any]) -> list[str]:
    if cfg.get("sweeps"):
        return [str(s) for s in cfg["sweeps"]]
    return [str(cfg["sweep"])] if cfg.get("sweep") else []


def _ablation_table(
    number: int,
    params: Mapping[str, Any],
    inputs: ReportInputs,
    reference: Mapping[str, Any] | None,
    split: str,
    companion: bool,
) -> Table | Omitted:
    cfg = params.get(f"table{number}") or None
    key = _key(number, split, companion)
    what = "component" if number == 3 else "layer / projection"
    if cfg is None:
        return Omitted(key, f"Table {number} not produced: the study has no {what} ablation sweep.")
    sweeps = _sweeps(cfg)
    adapter = str(cfg.get("adapter") or "")
    if number == 3:
        measures = measure_pairs(cfg.get("measures"))
    else:
        m = str(cfg.get("measure") or "nDCG@10")
        measures = [(m, m)]
    wanted_rows = measure_pairs(cfg.get("rows"))
    sweep_names = ", ".join(f"`{s}`" for s in sweeps) or "(none)"
    present = [s for s in sweeps if inputs.has_sweep(s)]
    if not present:
        return Omitted(key, f"Table {number} not produced: the study has no {sweep_names} sweep.")
    ev = inputs.evaluations
    ev = ev[
        ev["sweep"].isin(present)
        & (ev["adapter"] == adapter)
        & (ev["split"] == split)
        & ev["measure"].isin([m for _, m in measures])
    ]
    if ev.empty:
        return Omitted(
            key,
            f"Table {number} ({split_label(split)}) not produced: no rows for sweep "
            f"{sweep_names}, adapter `{adapter}`, split `{split}`.",
        )
    order = display_models(params, inputs)
    models = [m for m in order if m in set(ev["model"])]
    # each model is read from the first listed sweep that covers it, at that sweep's step
    chosen: dict[str, tuple[str, int]] = {}
    for model in models:
        for sweep in present:
            rows_ = ev[(ev["model"] == model) & (ev["sweep"] == sweep)]
            if not rows_.empty:
                chosen[model] = (sweep, int(rows_["step"].max()))
                break
    index: dict[tuple, pd.Series] = {}
    for model, (sweep, step) in chosen.items():
        part = ev[(ev["model"] == model) & (ev["sweep"] == sweep) & (ev["step"] == step)]
        index.update(_ev_index(part))

    notes: list[str] = []
    ref = _reference_part(reference, number, split, inputs, "adapter", adapter, notes)
    if not wanted_rows:  # every ablation present, `full` last as in the paper
        names = sorted({a for (_, _, a, _) in index} - {FULL}) + [FULL]
        wanted_rows = [(a, a) for a in names]
    present_ablations = {a for (_, _, a, _) in index}
    skipped = [a for a, _ in wanted_rows if a not in present_ablations]
    shown_rows = [(a, label) for a, label in wanted_rows if a in present_ablations]
    if not shown_rows:
        return Omitted(
            key,
            f"Table {number} ({split_label(split)}) not produced: sweep {sweep_names} has none "
            f"of the rows {', '.join(f'`{a}`' for a, _ in wanted_rows)}.",
        )
    if skipped:
        notes.append(
            "Rows without results left out: " + ", ".join(f"`{a}`" for a in skipped) + "."
        )

    columns: list[Column] = []
    for model in models:
        group, mech = inputs.model_label(model), inputs.mechanics_only(model)
        for label, measure in measures:
            if model in ref:
                sub = label if len(measures) > 1 else "reproduced"
                columns.append(Column(model, group, sub, measure, mech))
                columns.append(Column(model, group, "paper", measure, mech, paper=True))
            else:
                columns.append(Column(model, group, label, measure, mech))

    rows = baseline_rows(inputs, split, columns)
    for ablation, label in shown_rows:
        cells = []
        for c in columns:
            if c.paper:
                value = (ref.get(c.model) or {}).get(ablation)
                if isinstance(value, Mapping):
                    value = value.get(c.measure)
                cells.append(Cell(None if value is None else float(value), paper=True))
                continue
            sweep_step = chosen.get(c.model)
            row = index.get((c.model, sweep_step[1], ablation, c.measure)) if sweep_step else None
            cells.append(_cell(row))
        rows.append(Row(ablation, label, cells))

    steps = {inputs.model_label(m): s for m, (_, s) in chosen.items()}
    if len(set(steps.values())) == 1:
        at = f"checkpoint step {next(iter(steps.values()))}"
    else:
        at = "checkpoint steps " + ", ".join(f"{m} {s}" for m, s in steps.items())
    measure_names = " / ".join(label for label, _ in measures)
    if number == 3:
        caption = (
            f"{measure_names} of adapter `{adapter}` ({at}) with LoRA updates zeroed per "
            f"component, on {split_description(split, inputs)}."
        )
        labels = dict(shown_rows)
        if "no_lora" in labels:
            notes.insert(
                0,
                f"“{labels['no_lora']}” (`no_lora`) is a head-only reading: the trained score "
                "head on the base model, every LoRA update zeroed.",
            )
    else:
        caption = (
            f"{measure_names} of adapter `{adapter}` ({at}) with LoRA updates kept only in the "
            f"listed layers / projections, on {split_description(split, inputs)}."
        )
        if any("gate" in a for a, _ in shown_rows):
            no_gate = [
                inputs.model_label(m) for m in models
                if inputs.roles(m) and "gate" not in inputs.roles(m)
            ]
            if no_gate:
                notes.append(
                    f"{', '.join(no_gate)}: no gate projection; `up_gate` keeps the up "
                    "projection only."
                )
    used = sorted({s for s, _ in chosen.values()})
    table = Table(
        key=key,
        number=number,
        title=_title(number, split, companion),
        split=split,
        caption=caption,
        row_header="LoRA updates kept" if number == 4 else "Setting",
        columns=columns,
        rows=rows,
        notes=notes,
        sources=[
            f"`{inputs.source_path('evaluations')}`: sweep "
            + ", ".join(f"`{s}`" for s in used)
            + f", adapter `{adapter}`, split `{split}`, {at}, measures "
            + ", ".join(f"`{m}`" for _, m in measures)
        ],
        companion=companion,
    )
    table.notes.extend(_missing_models(order, models, inputs))
    table.notes.extend(_contrast_notes(inputs, chosen, adapter, split, dict(shown_rows),
                                       [m for _, m in measures]))
    _common_notes(table, inputs, ablation_table=True)
    if any(note.startswith("Pairwise") for note in table.notes):
        table.sources.append(f"`{inputs.source_path('contrasts')}`: the pairwise tests")
    return table


def _contrast_notes(
    inputs: ReportInputs,
    chosen: Mapping[str, tuple[str, int]],
    adapter: str,
    split: str,
    labels: Mapping[str, str],
    measures: Sequence[str],
) -> list[str]:
    """One note per model whose sweep compares pairs of the shown rows (``compare``): each
    pair's difference and corrected p-value, per measure."""
    ct = inputs.contrasts
    notes = []
    for model, (sweep, step) in chosen.items():
        part = ct[(ct["model"] == model) & (ct["sweep"] == sweep) & (ct["step"] == step)
                  & (ct["adapter"] == adapter) & (ct["split"] == split)
                  & ct["measure"].isin(measures)
                  & ct["a"].isin(list(labels)) & ct["b"].isin(list(labels))]
        if part.empty:
            continue
        said = []
        for (a, b), pair in part.groupby(["a", "b"], sort=False):
            tests = [
                f"{r.measure} {r.delta:+.4f} (p = {r.p_adjusted:.3g}"
                + (f" {SIGNIFICANT}" if r.significant else "") + ")"
                for r in pair.sort_values("measure").itertuples()
            ]
            said.append(f"“{labels[a]}” vs “{labels[b]}”: " + ", ".join(tests))
        queries = int(part["queries"].max())
        notes.append(
            f"Pairwise, {inputs.model_label(model)} (difference of the first minus the second; "
            f"{queries} queries; paired test corrected over the pairs, {SIGNIFICANT}: "
            "significant): " + "; ".join(said) + "."
        )
    return notes


def build_table3(params, inputs, reference, split, companion=False) -> Table | Omitted:
    return _ablation_table(3, params, inputs, reference, split, companion)


def build_table4(params, inputs, reference, split, companion=False) -> Table | Omitted:
    return _ablation_table(4, params, inputs, reference, split, companion)


BUILDERS = {1: build_table1, 2: build_table2, 3: build_table3, 4: build_table4}


def build_tables(
    params: Mapping[str, Any],
    inputs: ReportInputs,
    reference: Mapping[str, Any] | None,
    split: str,
    companion: bool = False,
) -> list[Table | Omitted]:
    """Tables 1-4 on one split."""
    return [build(params, inputs, reference, split, companion) for build in BUILDERS.values()]


def table_records(table: Table, decimals: int) -> list[dict[str, Any]]:
    """The table's data in long form (one record per cell), for ``tables/<key>.csv``."""
    records = []
    for row in table.rows:
        for col, cell in zip(table.columns, row.cells):
            records.append(
                {
                    "table": table.number if table.number is not None else table.key,
                    "split": table.split,
                    "row": row.key,
                    "row_label": row.label,
                    "model": col.model,
                    "model_label": col.group,
                    "mechanics_only": col.mechanics_only,
                    "column": col.label,
                    "measure": col.measure,
                    "source": (
                        "paper" if col.paper else "first_stage" if row.baseline else "reproduced"
                    ),
                    "value": cell.value,
                    "step": cell.step,
                    "significant": cell.significant,
                    "delta": cell.extra.get("delta"),
                    "p_value": cell.extra.get("p_value"),
                    "p_adjusted": cell.extra.get("p_adjusted"),
                    "queries": cell.extra.get("queries"),
                    "text": cell.text(decimals, fmt=col.fmt),
                }
            )
    return records
