"""Thin wrapper: the summarize rule's inputs and params into lorascope.summarize."""

import json
import logging
from pathlib import Path

from lorascope.summarize import summarize

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
jobs = snakemake.params.jobs  # noqa: F821
inputs = {
    "evaluations": jobs["evals"],
    "zero_shot": jobs["zero_shot"],
    "analyses": jobs["analyses"],
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
summarize(
    json.loads(snakemake.params.cfg),  # noqa: F821
    inputs,
    Path(snakemake.output.study).parent,  # noqa: F821
)
