"""The study report: the paper's four tables, figures and provenance, in Markdown, LaTeX and
one self-contained HTML page, plus the sections beyond the paper (layer × role heatmaps, each
registered analysis's section - boundary-layer pruning, relevance lens, LoRA update anatomy,
post-hoc rank compression - and the LoRA variants).

Entry point: :func:`render_report`. The report is built as data first (``tables``,
``figures``, ``variants_section``, each analysis's ``report`` module, ``document``), then rendered
by one module per format (``render_md``, ``render_latex``, ``render_html``). Everything goes to a temporary directory beside
``out_dir`` and is moved into place file by file (``os.replace``), the report pages last, so a
reader never sees a half-written file; files of an earlier render that this one no longer
produces (a figure whose sweep was removed, ...) are deleted.

Layout of ``out_dir`` (``reports/<study>/``)::

    report.md  report.tex  report.html
    table1.tex ... table4.tex, table1_<split>.tex ...   (each table alone, booktabs)
    table-boundary.tex, table-lens.tex, ...              (the tables beyond the paper)
    tables/<table>.csv                                   (every table's data, one row per cell)
    figures/<figure>.png, figures/<figure>.pdf
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core.names import REPORT_PAGES

__all__ = ["render_report"]


def _csv(records: list[dict[str, Any]]) -> bytes:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame.from_records(records).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def _managed(out_dir: Path) -> set[str]:
    """Files under ``out_dir`` that an earlier render wrote (and this one may replace)."""
    found = set()
    for pattern in ("table*.tex", "tables/*.csv", "figures/*.png", "figures/*.pdf"):
        found |= {p.relative_to(out_dir).as_posix() for p in out_dir.glob(pattern)}
    return found


def _install(files: Mapping[str, bytes], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        stale = _managed(out_dir) - set(files)
        # figures and tables first, the pages that refer to them last
        order = sorted(files, key=lambda rel: (rel in REPORT_PAGES, rel))
        for rel in order:
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, target)
        for rel in stale:
            (out_dir / rel).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render_report(params: Mapping[str, Any], summary_dir: str | Path, out_dir: str | Path) -> dict:
    """Render the report of one study from its summary directory into ``out_dir``.

    Args:
        params: the report slice of the study config (:func:`lorascope.study.slices.report`:
            study, reference, decimals, main_split, companion_splits, models, table1..table4,
            heatmap, and each analysis's section params under its name); see the
            ``variants_section`` and the analyses' ``report`` modules for the keys each part
            reads.
        summary_dir: holds the study summary's tables
            (:func:`lorascope.analyses.registry.summary_tables`, ``<table>.parquet``) and
            ``study.json`` (any part may be missing: its part of the report becomes a one-line
            note).
        out_dir: ``reports/<study>/``.

    Returns:
        A summary: ``files`` written (relative to ``out_dir``), ``tables`` and ``figures``
        rendered, ``omitted`` (key -> the one-line note) and document-level ``notes``.
    """
    from lorascope.report.data import load_inputs
    from lorascope.report.document import build_document
    from lorascope.report.render_html import render_html
    from lorascope.report.render_latex import render_latex, table_latex
    from lorascope.report.render_md import render_markdown
    from lorascope.report.tables import table_records

    out_dir = Path(out_dir)
    inputs = load_inputs(summary_dir)
    doc = build_document(params, inputs)
    files: dict[str, bytes] = {}
    for table in doc.tables():
        files[f"{table.key}.tex"] = table_latex(table, doc.decimals).encode()
        files[f"tables/{table.key}.csv"] = _csv(table_records(table, doc.decimals))
    for figure in doc.figures():
        files[f"figures/{figure.key}.png"] = figure.png
        files[f"figures/{figure.key}.pdf"] = figure.pdf
    files["report.md"] = render_markdown(doc).encode()
    files["report.tex"] = render_latex(doc).encode()
    files["report.html"] = render_html(doc).encode()
    _install(files, out_dir)
    return {
        "out_dir": str(out_dir),
        "files": sorted(files),
        "tables": [t.key for t in doc.tables()],
        "figures": [f.key for f in doc.figures()],
        "omitted": {o.key: o.note for o in doc.omitted()},
        "notes": list(doc.notes),
    }
