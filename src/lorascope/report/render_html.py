"""HTML rendering: ONE self-contained page (inline CSS, figures as base64 PNG data URIs, no
script, no external reference), readable from a file opened in any browser."""

from __future__ import annotations

import base64
import html
import re

from lorascope.report.model import (
    MECHANICS,
    SIGNIFICANT,
    Document,
    Figure,
    Omitted,
    Table,
)

CSS = """
:root { --fg: #1d2430; --muted: #5b6474; --line: #c9ced6; --accent: #2b5fab; --bg: #ffffff;
        --band: #f4f6f9; --paper: #7a6a4f; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 32px 60px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 42px 0 12px; padding-bottom: 4px;
     border-bottom: 2px solid var(--accent); }
h3 { font-size: 1.05em; margin: 22px 0 6px; }
.subtitle { color: var(--muted); margin: 0 0 16px; font-style: italic; }
nav { background: var(--band); padding: 10px 14px; border-radius: 6px; font-size: .92em; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
.docnote { border-left: 4px solid #d9a441; background: #fdf7ea; padding: 6px 12px; margin: 10px 0; }
figure { margin: 18px 0 30px; }
figure.table figcaption, figure.plot figcaption { font-size: .92em; color: var(--fg);
                                                 margin: 0 0 8px; }
figure.plot figcaption { margin: 6px 0 0; color: var(--muted); }
figcaption b { color: var(--fg); }
.scroll { overflow-x: auto; }
table.results { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .9em;
                border-top: 2px solid var(--fg); border-bottom: 2px solid var(--fg); }
table.results th, table.results td { padding: 4px 8px; white-space: nowrap; }
table.results thead tr:last-child th { border-bottom: 1px solid var(--fg); }
table.results th.group { border-bottom: 1px solid var(--line); text-align: center; }
table.results th { font-weight: 600; text-align: right; }
table.results th.rowhead, table.results td.rowlabel, table.results td.text,
table.results th.text { text-align: left; }
table.results td { text-align: right; }
table.results.wide { font-size: .8em; }
table.results.wide th, table.results.wide td { padding: 3px 5px; }
table.results tr.baseline td { border-bottom: 1px solid var(--line); color: var(--muted); }
table.results tbody tr:nth-child(even) { background: var(--band); }
table.results td.paper, table.results th.paper { color: var(--paper); font-style: italic; }
table.results td.sig { font-weight: 600; }
table.results sup { line-height: 0; }
table.results .gstart { border-left: 1px solid var(--line); }
ul.notes { font-size: .85em; color: var(--muted); margin: 6px 0 0; padding-left: 18px; }
p.source { font-size: .8em; color: var(--muted); margin: 4px 0 0; }
p.omitted { font-style: italic; color: var(--muted); border-left: 3px solid var(--line);
            padding-left: 10px; }
img { max-width: 100%; height: auto; border: 1px solid #eceff3; }
code { background: #eef1f5; padding: 0 3px; border-radius: 3px; font-size: .92em; }
table.prov { border-collapse: collapse; font-size: .88em; margin-bottom: 8px; }
table.prov td { padding: 3px 12px 3px 0; vertical-align: top; border-bottom: 1px solid #eceff3; }
table.prov td:first-child { color: var(--muted); white-space: nowrap; }
"""


def inline(text: str) -> str:
    """Escape text whose backtick spans become ``<code>``."""
    parts = re.split(r"`([^`]*)`", str(text))
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def _group(label: str, mechanics: bool) -> str:
    marker = f'<sup title="mechanics only">{MECHANICS}</sup>' if mechanics else ""
    return html.escape(label) + marker


def table_html(table: Table, decimals: int) -> str:
    starts = {0} | {i for i in range(1, len(table.columns))
                    if table.columns[i].group != table.columns[i - 1].group}
    wide = " wide" if len(table.columns) > 12 else ""
    out = [f'<figure class="table" id="{table.key}">',
           f"<figcaption><b>{inline(table.title)}.</b> {inline(table.caption)}</figcaption>",
           f'<div class="scroll"><table class="results{wide}">',
           "<thead>"]
    if table.grouped:
        out.append("<tr>" + f'<th class="rowhead" rowspan="2">{html.escape(table.row_header)}</th>'
                   + "".join(f'<th class="group gstart" colspan="{span}">{_group(label, mech)}</th>'
                             for label, mech, span in table.groups()) + "</tr>")
        out.append("<tr>" + "".join(
            f'<th class="{"paper" if c.paper else ""}{" gstart" if i in starts else ""}'
            f'{" text" if c.fmt == "text" else ""}">'
            f"{html.escape(c.label)}</th>" for i, c in enumerate(table.columns)) + "</tr>")
    else:
        out.append("<tr>" + f'<th class="rowhead">{html.escape(table.row_header)}</th>' + "".join(
            f'<th class="gstart">{_group(c.group, c.mechanics_only)}</th>'
            for c in table.columns) + "</tr>")
    out += ["</thead>", "<tbody>"]
    for row in table.rows:
        cls = ' class="baseline"' if row.baseline else ""
        tds = [f'<td class="rowlabel">{_group(row.label, row.mechanics_only)}</td>']
        for i, (col, cell) in enumerate(zip(table.columns, row.cells)):
            classes = [k for k, on in (("paper", col.paper), ("sig", cell.significant),
                                       ("gstart", i in starts), ("text", col.fmt == "text"))
                       if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            text = html.escape(cell.text(decimals, marker="", fmt=col.fmt))
            if cell.significant:
                text += f'<sup title="significant">{SIGNIFICANT}</sup>'
            tds.append(f"<td{attr}>{text}</td>")
        out.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    out += ["</tbody></table></div>"]
    if table.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{inline(n)}</li>" for n in table.notes)
                   + "</ul>")
    for source in table.sources:
        out.append(f'<p class="source">Source: {inline(source)}</p>')
    out.append("</figure>")
    return "\n".join(out)


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure class="plot" id="fig-{figure.key}">'
        f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{inline(figure.title)}.</b> {inline(figure.caption)}</figcaption>"
        "</figure>"
    )


def render_html(doc: Document) -> str:
    title_text = re.sub(r"`([^`]*)`", r"\1", doc.title)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title_text)}</title>",
        f"<style>{CSS}</style>",
        "</head><body><main>",
        f"<h1>{inline(doc.title)}</h1>",
        f'<p class="subtitle">{inline(doc.subtitle)}</p>',
    ]
    links = [f'<a href="#{s.anchor}">{inline(s.title)}</a>' for s in doc.sections]
    links.append('<a href="#provenance">Provenance</a>')
    out.append("<nav>" + "".join(links) + "</nav>")
    out += [f'<p class="docnote">{inline(n)}</p>' for n in doc.notes]
    for section in doc.sections:
        out.append(f'<section id="{section.anchor}"><h2>{inline(section.title)}</h2>')
        for item in section.items:
            if isinstance(item, Table):
                out.append(table_html(item, doc.decimals))
            elif isinstance(item, Figure):
                out.append(figure_html(item))
            elif isinstance(item, Omitted):
                out.append(f'<p class="omitted">{inline(item.note)}</p>')
            else:
                out.append(f"<p>{inline(str(item))}</p>")
        out.append("</section>")
    out.append('<section id="provenance"><h2>Provenance</h2>')
    for heading, pairs in doc.provenance:
        out.append(f"<h3>{inline(heading)}</h3><table class=\"prov\">" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{inline(v)}</td></tr>" for k, v in pairs)
            + "</table>")
    out += ["</section>", "</main></body></html>", ""]
    return "\n".join(out)
