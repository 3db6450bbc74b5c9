"""Markdown rendering of the report (GitHub-flavoured tables, figures as relative links)."""

from __future__ import annotations

from lorascope.report.model import (
    MECHANICS,
    SIGNIFICANT,
    Document,
    Figure,
    Omitted,
    Table,
)


def md_text(text: str) -> str:
    """Text from the study (labels, notes, captions) safe in Markdown: ``<`` and ``>`` as
    entities outside code spans (inside backticks they show literally already), so no HTML
    from a config or a summary reaches a Markdown viewer as HTML."""
    import re

    parts = re.split(r"(`[^`]*`)", str(text))
    return "".join(
        part if part.startswith("`") and part.endswith("`") and len(part) > 1
        else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    )


def _esc(text: str) -> str:
    """Escape what would break a Markdown table cell (and any HTML, :func:`md_text`)."""
    return md_text(text).replace("|", "\\|").replace("\n", " ")


def _group(label: str, mechanics: bool) -> str:
    return label + (MECHANICS if mechanics else "")


def header_cells(table: Table) -> list[str]:
    """One header row: a grouped table writes the model on the first column of its group."""
    out = [table.row_header]
    if table.grouped:
        previous = None
        for col in table.columns:
            if col.group != previous:
                out.append(f"{_group(col.group, col.mechanics_only)} {col.label}")
            else:
                out.append(col.label)
            previous = col.group
    else:
        out.extend(_group(c.group, c.mechanics_only) for c in table.columns)
    return out


def table_markdown(table: Table, decimals: int) -> str:
    lines = [f"### {md_text(table.title)}", "", md_text(table.caption), ""]
    head = header_cells(table)
    lines.append("| " + " | ".join(_esc(h) for h in head) + " |")
    lines.append("|" + "|".join([":---"] + [":---" if c.fmt == "text" else "---:"
                                            for c in table.columns]) + "|")
    for row in table.rows:
        cells = [_esc(_group(row.label, row.mechanics_only))] + [
            _esc(cell.text(decimals, SIGNIFICANT, col.fmt))
            for col, cell in zip(table.columns, row.cells)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for note in table.notes:
        lines.append(f"- {md_text(note)}")
    for source in table.sources:
        lines.append(f"- Source: {md_text(source)}")
    lines.append("")
    return "\n".join(lines)


def figure_markdown(figure: Figure) -> str:
    return "\n".join(
        [f"#### {md_text(figure.title)}", "",
         f"![{md_text(figure.title)}](figures/{figure.key}.png)", "",
         f"*{md_text(figure.caption)}*", ""]
    )


def render_markdown(doc: Document) -> str:
    lines = [f"# {md_text(doc.title)}", "", f"*{md_text(doc.subtitle)}*", ""]
    for note in doc.notes:
        lines += [f"> {md_text(note)}", ""]
    lines += ["Contents: " + " · ".join(
        [md_text(s.title) for s in doc.sections] + ["Provenance"]), ""]
    for section in doc.sections:
        lines += [f"## {md_text(section.title)}", ""]
        for item in section.items:
            if isinstance(item, Table):
                lines.append(table_markdown(item, doc.decimals))
            elif isinstance(item, Figure):
                lines.append(figure_markdown(item))
            elif isinstance(item, Omitted):
                lines += [md_text(item.note), ""]
            else:
                lines += [md_text(str(item)), ""]
    lines += ["## Provenance", ""]
    for heading, pairs in doc.provenance:
        lines += [f"### {md_text(heading)}", "", "| | |", "|:---|:---|"]
        lines += [f"| {_esc(k)} | {_esc(v)} |" for k, v in pairs]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
