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


def _esc(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


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
    lines = [f"### {table.title}", "", table.caption, ""]
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
        lines.append(f"- {note}")
    for source in table.sources:
        lines.append(f"- Source: {source}")
    lines.append("")
    return "\n".join(lines)


def figure_markdown(figure: Figure) -> str:
    return "\n".join(
        [f"#### {figure.title}", "", f"![{figure.title}](figures/{figure.key}.png)", "",
         f"*{figure.caption}*", ""]
    )


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", "", f"*{doc.subtitle}*", ""]
    for note in doc.notes:
        lines += [f"> {note}", ""]
    lines += ["Contents: " + " · ".join(
        [s.title for s in doc.sections] + ["Provenance"]), ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for item in section.items:
            if isinstance(item, Table):
                lines.append(table_markdown(item, doc.decimals))
            elif isinstance(item, Figure):
                lines.append(figure_markdown(item))
            elif isinstance(item, Omitted):
                lines += [item.note, ""]
            else:
                lines += [str(item), ""]
    lines += ["## Provenance", ""]
    for heading, pairs in doc.provenance:
        lines += [f"### {heading}", "", "| | |", "|:---|:---|"]
        lines += [f"| {_esc(k)} | {_esc(v)} |" for k, v in pairs]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
