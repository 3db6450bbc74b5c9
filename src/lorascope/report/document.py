"""Assemble the whole report (:class:`Document`) from the params and the loaded inputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lorascope.analyses.registry import ANALYSES, load, summary_tables
from lorascope.core.names import PAPER_SUMMARY_TABLES
from lorascope.report import figures as figs
from lorascope.report.data import ReportInputs, load_reference
from lorascope.report.model import Document, Figure, Omitted, Section, Table
from lorascope.report.tables import build_table1, build_tables, display_models, split_label


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def _flat(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _provenance(
    params: Mapping[str, Any], inputs: ReportInputs, items: list[Table | Figure | Omitted]
) -> list[tuple[str, list[tuple[str, str]]]]:
    study = inputs.study
    prov = study.get("provenance") or {}
    out: list[tuple[str, list[tuple[str, str]]]] = []
    out.append(
        (
            "Study",
            [
                ("study", str(study.get("study") or params.get("study") or "")),
                ("config hash", str(params.get("config_hash") or study.get("config_hash")
                                     or "unknown")),
                ("git commit", str(prov.get("git_commit") or "unknown")),
                ("created", str(prov.get("created") or "unknown")),
                ("reference", str(params.get("reference") or "none")),
            ],
        )
    )
    versions = prov.get("versions") or {}
    if versions:
        out.append(("Package versions", [(k, _flat(v)) for k, v in sorted(versions.items())]))
    hardware = prov.get("hardware") or {}
    if hardware:
        out.append(("Hardware", [(k, _flat(v)) for k, v in sorted(hardware.items())]))
    precision = study.get("precision") or {}
    if precision:
        rows = [(f"scoring ({n} evaluation jobs)", what)
                for what, n in sorted((precision.get("scoring") or {}).items())]
        training = precision.get("training") or {}
        for what in sorted(set(training.values())):
            runs = sorted(run for run, p in training.items() if p == what)
            rows.append((f"training ({len(runs)} runs)", what))
        out.append(("Precision", rows))
    wall = study.get("wall_times") or {}
    if wall:
        rows = [(rule, _duration(s)) for rule, s in sorted(wall.items())]
        rows.append(("total", _duration(sum(float(s) for s in wall.values()))))
        out.append(("Wall time per stage", rows))
    sources: list[tuple[str, str]] = []
    previous: Table | Figure | Omitted | None = None
    for item in items:
        after_table, previous = isinstance(previous, Table), item
        if isinstance(item, (Table, Figure)) and item.sources:
            text = "; ".join(item.sources)
            if after_table and isinstance(item, Figure) and sources[-1][1] == text:
                # a figure of the table just listed: same data
                sources[-1] = (f"{sources[-1][0]} (and its figure)", text)
                continue
            sources.append((item.title, text))
    files = [(name, inputs.source_path(name)) for name in summary_tables()
             if name in PAPER_SUMMARY_TABLES or inputs.files.get(name) is not None]
    files.append(("study", str((study.get("inputs") or {}).get("study") or inputs.files.get("study")
                               or "study.json")))
    out.append(("Summary inputs", files))
    if sources:
        out.append(("Data behind each table and figure", sources))
    return out


VARIANTS_INTRO = "The same experiments per LoRA variant (DoRA, rsLoRA, PiSSA, OLoRA, EVA)."


def _section(title: str, anchor: str, intro: str, items: list[Table | Figure | Omitted]
             ) -> Section:
    """A "beyond the paper" section; its intro only when something is shown."""
    shown = any(not isinstance(i, Omitted) for i in items)
    return Section(title, anchor, ([intro] if shown else []) + list(items))


def beyond_sections(params: Mapping[str, Any], inputs: ReportInputs) -> list[Section]:
    """The sections beyond the paper's tables, in reading order: where relevance lives (the
    layer x role heatmaps, the training loss), each registered analysis's section, the
    variants."""
    from lorascope.report.variants_section import variants_table

    where: list[Table | Figure | Omitted] = [*figs.heatmaps(params, inputs),
                                             figs.training_loss(params, inputs)]
    sections = [Section("Beyond the paper: where relevance lives", "beyond", list(where))]
    for analysis in ANALYSES:
        items = load(analysis.module("report"), "items")(params, inputs)
        anchor = "boundary-layer" if analysis.name == "boundary" else analysis.name
        sections.append(_section(analysis.title, anchor, analysis.intro, items))
    sections.append(_section("Beyond the paper: LoRA variants", "variants", VARIANTS_INTRO,
                             [variants_table(params, inputs)]))
    return sections


def build_document(params: Mapping[str, Any], inputs: ReportInputs) -> Document:
    decimals = int(params.get("decimals", 4))
    reference = load_reference(params.get("reference"))
    main = str(params.get("main_split") or "dl19")
    companions = [str(s) for s in params.get("companion_splits") or [] if s != main]
    notes: list[str] = []

    if reference is not None:
        ref_models = list((reference.get("models") or {}))
        models = display_models(params, inputs)
        if not set(ref_models) & set(models):
            notes.append(
                f"Reference `{params.get('reference')}`: none of this study's models "
                f"({', '.join(models)}) is one of the paper's ({', '.join(ref_models)}); no "
                "published values are shown."
            )

    sections: list[Section] = []
    main_items: list[Table | Figure | Omitted | str] = []
    for item in build_tables(params, inputs, reference, main):
        main_items.append(item)
        if isinstance(item, Table):
            if item.number == 1:
                curves = params.get("curves_split")
                if curves and curves != main:
                    # the main split is evaluated at the last checkpoint only: the curves
                    # come from the split every checkpoint is evaluated on
                    curve_table = build_table1(params, inputs, reference, curves, companion=True)
                    main_items.append(curve_table)
                    if isinstance(curve_table, Table):
                        item = curve_table
                main_items.append(figs.learning_curves(item))
            elif item.number == 2:
                main_items.append(figs.rank_comparison(item))
            else:
                main_items.append(figs.ablation_bars(item))
    sections.append(Section(f"The paper's tables — {split_label(main)}", "main", main_items))

    sections.extend(beyond_sections(params, inputs))

    for split in companions:
        items: list[Table | Figure | Omitted | str] = list(
            build_tables(params, inputs, reference, split, companion=True)
        )
        sections.append(
            Section(f"Companion tables — {split_label(split)}", f"companion-{split}", items)
        )

    all_items = [i for s in sections for i in s.items if not isinstance(i, str)]
    study_name = str(inputs.study.get("study") or params.get("study") or "study")
    mech = [inputs.model_label(m) for m in display_models(params, inputs)
            if inputs.mechanics_only(m)]
    if mech:
        notes.append(
            f"Mechanics-only models ({', '.join(mech)}) exercise the pipeline end to end; "
            "their numbers do not test the paper's claims."
        )
    return Document(
        title=f"lorascope report — study `{study_name}`",
        subtitle=(
            "Reproduction of Nijasure, Chowdhury & Allan, How Relevance Emerges: A Mechanistic "
            "Analysis of LoRA Fine-Tuning in Reranking LLMs"
        ),
        decimals=decimals,
        sections=sections,
        provenance=_provenance(params, inputs, all_items),
        notes=notes,
    )
