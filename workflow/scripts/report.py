"""Thin wrapper: the report rule's params into lorascope.report.render_report."""

import json
import logging
from pathlib import Path

from lorascope.report import render_report

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
render_report(
    {
        **json.loads(snakemake.params.cfg),  # noqa: F821
        "config_hash": snakemake.params.config_hash,  # noqa: F821
    },
    Path(snakemake.input.study).parent,  # noqa: F821
    Path(snakemake.params.out_dir),  # noqa: F821
)
