"""What an analysis is, as the study, the summary and the report see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lorascope.core.contracts import Contract

#: The modules every analysis folder has (``lorascope.analyses.<name>.<part>``):
#: ``study`` (its config block parsed, its jobs and slices; DAG-build time only), ``cli`` (its
#: stages' subcommands) and ``report`` (its report section).
PARTS = ("study", "cli", "report")


@dataclass(frozen=True)
class Analysis:
    """One analysis beyond the paper, registered once in :mod:`lorascope.analyses.registry`.

    Attributes:
        name: its folder (``lorascope/analyses/<name>/``), rule file
            (``workflow/rules/analyses/<name>.smk``) and config key (``analyses.<name>``).
        title: its report section's title.
        intro: its report section's first paragraph (shown when the section has content).
        tables: the study summary tables it adds (``summary/<table>.parquet``), by name.
        schema: whether the folder has ``schema.yaml``, the JSON schema of ``analyses.<name>``
            (an analysis driven by a sweep generator alone has none).
        summary: whether the folder has ``summary.py``, whose ``collect(entries)`` turns the
            analysis's job outputs into summary rows; without it, the per-job tables of each
            of ``tables`` are concatenated.
    """

    name: str
    title: str
    intro: str
    tables: Mapping[str, Contract] = field(default_factory=dict)
    schema: bool = True
    summary: bool = False

    @property
    def package(self) -> str:
        return f"lorascope.analyses.{self.name}"

    def module(self, part: str) -> str:
        """The module name of one part (``study``, ``cli``, ``report``, ``summary``)."""
        return f"{self.package}.{part}"

    def parts(self) -> tuple[str, ...]:
        """The parts this analysis has."""
        return PARTS + (("summary",) if self.summary else ())
