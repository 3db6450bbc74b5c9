"""Thin wrapper: the report rule's params into lorascope.report.render_report."""

import logging
from pathlib import Path

from lorascope.report import render_report

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
render_report(
    snakemake.params.cfg,  # noqa: F821
    Path(snakemake.input.study).parent,  # noqa: F821
    Path(snakemake.params.out_dir),  # noqa: F821
)
