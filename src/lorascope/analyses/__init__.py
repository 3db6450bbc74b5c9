"""Analyses beyond the paper, one folder each, registered once (:mod:`.registry`).

An analysis folder ``lorascope/analyses/<name>/`` holds:

* ``__init__.py``: its :class:`~lorascope.analyses.base.Analysis` (name, report section
  title and intro, the summary tables it adds) and the Parquet contracts of those tables;
* ``schema.yaml`` (optional): the JSON schema of its ``analyses.<name>`` config block;
* ``study.py``: its study side, used at DAG-build time only - ``parse(raw, study)`` (its
  config block checked against the study), ``jobs(study)`` (the wildcards of its jobs),
  ``SLICES`` (each of its rules' config slice) and ``report_params(study)``;
* its computation and its stage entry points (``stage.py`` or one module per stage), each
  stage a function the rule's code version names;
* ``cli.py``: ``add_commands(add)``, the subcommands of its stages;
* ``report.py``: ``items(params, inputs)``, its report section;
* ``summary.py`` (optional): ``collect(entries)``, its rows of the study summary when
  concatenating its jobs' tables is not enough.

Its rules are in ``workflow/rules/analyses/<name>.smk``. Adding an analysis: that folder,
that rule file, and one line in :mod:`.registry` (the README has the checklist).
"""
