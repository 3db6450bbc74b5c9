"""Partial reruns: after one change, Snakemake plans exactly the jobs that depend on it.

The small study (``small_study.py``, with a boundary sweep, boundary pruning and the lens)
runs once for real in a temporary directory; then each change (a config value, an edited
package module or data file) is followed by a dry run whose planned jobs must be exactly the
expected set, and, where a job is planned only because its inputs will change, for that reason
(not because its own code or slice changed). The table "change -> planned jobs" is printed at
the end of the module (and written to ``$LORASCOPE_RERUN_TABLE`` when that is set). Which files
each stage's code version covers is tested on its own in tests/test_codedeps.py.

The workflow part runs against private copies of the workflow and of the package (imported
through ``PYTHONPATH``), so modules are edited in the copy, never in the checkout, and edits
other people make to the checkout meanwhile cannot change what the dry runs plan.

Files are edited, not only touched: Snakemake records checksums of inputs up to 1 MB
(``--max-checksum-file-size``) and does not rerun a job whose input got a newer mtime with the
same content (a ``git checkout`` that rewrites files unchanged reruns nothing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from small_study import (
    JOBS,
    MODEL,
    RERUN_ANALYSIS_JOBS,
    curve_job,
    evaluate_job,
    small_study,
    with_rerun_analyses,
    write_config,
)
from workflow_utils import REPO, copy_package, snakemake_bin

# --------------------------------------------------------------------------- workflow


@dataclass
class StudyRun:
    """The small study, run once; dry runs against it after one change each."""

    workdir: Path
    snakefile: Path
    site: Path
    config: Path
    env: dict[str, str]
    table: list[tuple[str, list[str]]] = field(default_factory=list)

    def snakemake(
        self, *args: str, config: Path | None = None, site: Path | None = None, timeout: int = 600
    ) -> str:
        cmd = [
            snakemake_bin(),
            "-s",
            str(self.snakefile),
            "--directory",
            str(self.workdir),
            "--configfile",
            str(config or self.config),
            *args,
        ]
        env = {**self.env, "PYTHONPATH": str(site or self.site)}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-6000:]}"
        return text

    def planned(self, config: Path | None = None, site: Path | None = None) -> dict[str, str]:
        """The jobs a dry run plans: {label: reason}."""
        return parse_dry_run(self.snakemake("--dry-run", config=config, site=site))


JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")


def parse_dry_run(text: str) -> dict[str, str]:
    """{``rule[wildcard values but the study]``: reason} of every job a dry run lists; the
    count is checked against the dry run's own job statistics."""
    jobs: dict[str, str] = {}
    rule = None
    fields: dict[str, str] = {}

    def close() -> None:
        if rule is None:
            return
        values = [
            kv.split("=", 1)[1]
            for kv in fields.get("wildcards", "").split(", ")
            if "=" in kv and not kv.startswith("study=")
        ]
        label = f"{rule}[{'/'.join(values)}]" if values else rule
        assert label not in jobs, f"job {label} listed twice"
        jobs[label] = fields.get("reason", "")

    for line in text.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            close()
            rule, fields = header.group(1), {}
        elif rule is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            fields[key] = value
        elif rule is not None and not line.startswith("    "):
            close()
            rule = None
    close()
    total = re.search(r"^total\s+(\d+)$", text, re.MULTILINE)
    if total is None:
        assert "Nothing to be done" in text, text[-3000:]
        assert not jobs
    else:
        assert int(total.group(1)) == len(jobs), f"parsed {sorted(jobs)} of {total.group(1)} jobs"
    return jobs


@pytest.fixture(scope="module")
def study(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[StudyRun]:
    base = tmp_path_factory.mktemp("reruns")
    wf = base / "workflow-copy"
    wf.mkdir()
    shutil.copy2(REPO / "Snakefile", wf / "Snakefile")
    for folder in ("workflow", "envs"):
        shutil.copytree(REPO / folder, wf / folder, ignore=shutil.ignore_patterns("__pycache__"))
    site = copy_package(base / "site")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(site),
    }
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    workdir = base / "run"
    workdir.mkdir()
    run = StudyRun(
        workdir, wf / "Snakefile", site, write_config(rerun_study(), base / "study.yaml"), env
    )
    start = time.monotonic()
    run.snakemake("--cores", "2")
    seconds = time.monotonic() - start
    assert (workdir / "reports" / "small" / "report.html").is_file()
    yield run
    lines = [
        f"Small study: {len(STUDY_JOBS)} jobs, first run {seconds:.0f} s. Change -> planned jobs"
        " (a job marked * is planned only because its inputs change):",
        "",
    ]
    lines += ["| change | planned jobs |", "|---|---|"]
    lines += [
        f"| {change} | {', '.join(jobs) if jobs else '(nothing)'} |" for change, jobs in run.table
    ]
    text = "\n".join(lines) + "\n"
    (base / "rerun_table.md").write_text(text)
    if os.environ.get("LORASCOPE_RERUN_TABLE"):
        Path(os.environ["LORASCOPE_RERUN_TABLE"]).write_text(text)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # straight to the terminal / CI log
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


@dataclass(frozen=True)
class Change:
    """One change to the study: a config edit or edited package files (relative to the
    package folder), and the exact jobs the dry run must then plan."""

    name: str
    expected: frozenset[str]
    edit: Callable[[dict[str, Any]], None] | None = None
    files: tuple[str, ...] = ()
    touch_only: bool = False
    moved: bool = False
    #: planned jobs that must be planned only because their inputs change (their own code
    #: and config slice are as before)
    downstream: frozenset[str] = frozenset()


def modify(path: Path) -> None:
    """Change a file's content without changing what it means: a comment appended to a
    module, a Parquet table rewritten with another compression."""
    if path.suffix == ".py":
        with open(path, "a") as handle:
            handle.write("\n# edited by test_reruns\n")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(path), path, compression="gzip")
    else:
        raise ValueError(f"modify: no way to edit {path}")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


RULES = (
    "prepare_train",
    "prepare_split",
    "evaluate_first_stage",
    "prepare_base",
    "train_lora",
    "extract_adapter",
    "evaluate_zero_shot",
    "evaluate_checkpoints",
    "evaluate",
    "prune_boundary",
    "compare_boundary",
    "lens",
    "anatomy",
    "summarize",
    "report",
    "all",
)


def pipeline_order(label: str) -> tuple[int, str]:
    rule = label.split("[")[0]
    return (RULES.index(rule) if rule in RULES else len(RULES), label)


def rerun_study() -> dict[str, Any]:
    """The study the rerun table starts from: the small study with its cheapest analyses."""
    return with_rerun_analyses(small_study())


STUDY_JOBS = JOBS | RERUN_ANALYSIS_JOBS
TAIL = frozenset({"summarize", "report", "all"})
SWEEP_EVALS = frozenset(j for j in STUDY_JOBS if j.startswith("evaluate["))
ALL_EVALS = SWEEP_EVALS | {curve_job("r1-all", "validation")}
PRUNE = f"prune_boundary[{MODEL}/r1-all/2]"
COMPARE = f"compare_boundary[{MODEL}/r1-all/2/dl19]"
LENS = f"lens[{MODEL}/r1-all/validation]"
BOUNDARY_EVAL = evaluate_job("r1-all", 2, "boundary", "validation")
DL19_EVAL = evaluate_job("r1-all", 2, "components", "dl19")
R1_ADAPTERS = frozenset({f"extract_adapter[{MODEL}/r1-all/1]", f"extract_adapter[{MODEL}/r1-all/2]"})

CHANGES = [
    Change("nothing", frozenset()),
    Change(
        "training.adapters[0].ranks: [1] -> [1, 2]",
        frozenset(
            {
                f"train_lora[{MODEL}/r2-all]",
                f"extract_adapter[{MODEL}/r2-all/1]",
                f"extract_adapter[{MODEL}/r2-all/2]",
                curve_job("r2-all", "validation"),
                evaluate_job("r2-all", 2, "per_layer", "validation"),
            }
        )
        | TAIL,
        edit=lambda raw: raw["training"]["adapters"][0].update(ranks=[1, 2]),
    ),
    Change(
        "sweeps.components.ablations: + mha_only",
        frozenset({DL19_EVAL}) | TAIL,
        edit=lambda raw: raw["sweeps"]["components"]["ablations"].update(
            mha_only={"keep": {"component": "attn"}}
        ),
    ),
    Change(
        "report.decimals: 4 -> 3", frozenset({"report", "all"}), edit=_set("report.decimals", 3)
    ),
    Change(
        "analyses.anatomy: {} (added)",
        frozenset({f"anatomy[{MODEL}/r1-all]"}) | TAIL,
        edit=lambda raw: raw["analyses"].update(anatomy={}),
    ),
    Change(
        "analyses.lens.splits: + dl19",
        frozenset({f"lens[{MODEL}/r1-all/dl19]"}) | TAIL,
        edit=lambda raw: raw["analyses"]["lens"].update(splits=["validation", "dl19"]),
    ),
    Change(
        "analyses.boundary.splits: dl19 -> validation",
        frozenset({f"compare_boundary[{MODEL}/r1-all/2/validation]"}) | TAIL,
        edit=lambda raw: raw["analyses"]["boundary"].update(splits=["validation"]),
    ),
    Change(
        "evaluation.metrics: - AP(rel=2)",
        ALL_EVALS
        | {"evaluate_first_stage[validation]", "evaluate_first_stage[dl19]", COMPARE, LENS, PRUNE}
        | TAIL,
        edit=_set("evaluation.metrics", ["nDCG@10", "RR(rel=2)"]),
        downstream=frozenset({PRUNE}),
    ),
    Change(
        "evaluation.significance.test: wilcoxon -> ttest",
        SWEEP_EVALS | {PRUNE, COMPARE} | TAIL,
        edit=_set("evaluation.significance.test", "ttest"),
        downstream=frozenset({PRUNE}),
    ),
    Change(
        "data.splits.dl19.depth: 5 -> 6",
        frozenset({"prepare_split[dl19]", "evaluate_first_stage[dl19]", DL19_EVAL, COMPARE}) | TAIL,
        edit=_set("data.splits.dl19.depth", 6),
        downstream=frozenset({"evaluate_first_stage[dl19]", DL19_EVAL, COMPARE}),
    ),
    Change(
        "edit lorascope/study/parse.py (the config parser)",
        frozenset(),
        files=("study/parse.py",),
    ),
    Change(
        "edit lorascope/training/loop.py",
        frozenset({f"train_lora[{MODEL}/r1-all]"}) | R1_ADAPTERS | ALL_EVALS
        | {PRUNE, COMPARE, LENS} | TAIL,
        files=("training/loop.py",),
        downstream=R1_ADAPTERS | ALL_EVALS | {PRUNE, COMPARE, LENS},
    ),
    Change(
        "edit lorascope/evaluate.py (the sweep loop)",
        SWEEP_EVALS | {PRUNE, COMPARE} | TAIL,
        files=("evaluate.py",),
        downstream=frozenset({PRUNE, COMPARE}),
    ),
    Change(
        "edit lorascope/analyses/lens/stage.py",
        frozenset({LENS}) | TAIL,
        files=("analyses/lens/stage.py",),
    ),
    Change(
        "edit lorascope/analyses/boundary/export.py",
        frozenset({PRUNE, COMPARE}) | TAIL,
        files=("analyses/boundary/export.py",),
        downstream=frozenset({COMPARE}),
    ),
    Change(
        "edit lorascope/analyses/lens/report.py (its report section)",
        frozenset({"report", "all"}),
        files=("analyses/lens/report.py",),
    ),
    Change(
        "edit lorascope/report/figures.py",
        frozenset({"report", "all"}),
        files=("report/figures.py",),
    ),
    Change(
        "edit the embedded DL19 tables (lorascope/resources/trec-dl/dl19.*)",
        frozenset({"prepare_split[dl19]", "evaluate_first_stage[dl19]", DL19_EVAL, COMPARE}) | TAIL,
        files=tuple(
            f"resources/trec-dl/dl19.{t}.parquet" for t in ("queries", "candidates", "qrels")
        ),
        downstream=frozenset({"evaluate_first_stage[dl19]", DL19_EVAL, COMPARE}),
    ),
    Change(
        "touch lorascope/training/loop.py (mtime only, same content)",
        frozenset(),
        files=("training/loop.py",),
        touch_only=True,
    ),
    Change(
        "the same package installed elsewhere (a second copy on PYTHONPATH)",
        frozenset(),
        moved=True,
    ),
]

UPDATED_INPUT = "Input files updated by another job"
OWN_CHANGE = ("Params have changed", "Code has changed", "Set of input files has changed")


@pytest.mark.workflow
@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_one_change_plans_exactly_its_jobs(study: StudyRun, change: Change):
    config = None
    if change.edit is not None:
        raw = rerun_study()
        change.edit(raw)
        config = write_config(raw, study.workdir.parent / "changed.yaml")
    site = None
    if change.moved:  # the package the study ran with, at another path
        site = study.workdir.parent / "site-moved"
        shutil.copytree(study.site / "lorascope", site / "lorascope", dirs_exist_ok=True)
    paths = [study.site / "lorascope" / rel for rel in change.files]
    saved = [(path.read_bytes(), os.stat(path)) for path in paths]
    try:
        for path in paths:
            if not change.touch_only:
                modify(path)
            now = time.time()
            os.utime(path, (now, now))
        planned = study.planned(config, site=site)
    finally:
        for path, (data, st) in zip(paths, saved):
            path.write_bytes(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    study.table.append(
        (
            change.name,
            [f"{job}*" if job in change.downstream else job
             for job in sorted(planned, key=pipeline_order)],
        )
    )
    assert set(planned) == change.expected, (
        f"unexpected: {sorted(set(planned) - change.expected)}; "
        f"missing: {sorted(change.expected - set(planned))}"
    )
    for job in change.downstream:  # planned for its inputs alone: its code and slice as before
        reason = planned[job]
        assert UPDATED_INPUT in reason and not any(r in reason for r in OWN_CHANGE), (job, reason)
    if paths and change.expected and not change.touch_only:
        # the edited files reach the jobs that run them through params.code
        own = [job for job in planned if job not in change.downstream and job != "all"]
        assert any("Params have changed" in planned[job] for job in own), planned
