"""Thin wrapper: the summarize rule's inputs and params into lorascope.summarize."""

import logging
from pathlib import Path

from lorascope.summarize import summarize

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
jobs = snakemake.params.jobs  # noqa: F821
inputs = {
    "evaluations": [
        {**job, "summary": path}
        for job, path in zip(jobs["evals"], snakemake.input.evals)  # noqa: F821
    ],
    "boundary": [
        {**job, "summary": path}
        for job, path in zip(jobs["boundary"], snakemake.input.boundary)  # noqa: F821
    ],
    "lens": list(snakemake.input.lens),  # noqa: F821
    "anatomy": list(snakemake.input.anatomy),  # noqa: F821
    "first_stage": {
        Path(path).parent.name: path for path in snakemake.input.first_stage  # noqa: F821
    },
    "training": [
        {"model": Path(d).parent.name, "adapter": Path(d).name, "log": f"{d}/train_log.csv"}
        for d in snakemake.input.train  # noqa: F821
    ],
    "benchmarks": snakemake.params.benchmarks,  # noqa: F821
    "models": {Path(d).parent.name: d for d in snakemake.input.bases},  # noqa: F821
}
summarize(snakemake.params.cfg, inputs, Path(snakemake.output.study).parent)  # noqa: F821
