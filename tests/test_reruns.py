"""Partial reruns: after one change, Snakemake plans exactly the jobs that depend on it.

Two parts:

- ``lorascope.codedeps`` on a synthetic package and on lorascope itself (which files a stage
  entry point runs, found wherever the package is imported; a content hash of them that
  does not depend on where that is).
- The workflow: the small study (``small_study.py``) runs once for real in a temporary
  directory; then each change (a config value, an edited package module or data file) is
  followed by a dry run whose planned jobs must be exactly the expected set. The table
  "change -> planned jobs" is printed at the end of the module (and written to
  ``$LORASCOPE_RERUN_TABLE`` when that is set).

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
from small_study import JOBS, MODEL, evaluate_job, small_study, write_config
from workflow_utils import REPO, snakemake_bin

import lorascope
from lorascope import codedeps
from lorascope.codedeps import CodeDepsError, code_deps, code_version, module_closure

# --------------------------------------------------------------------------- codedeps units

FAKE = {
    "__init__.py": "",
    "a.py": (
        "from fakepkg import b\n"
        "def f():\n    from fakepkg.c import g\n    return g()\n"
        "def h():\n    from . import d\n    return d\n"
    ),
    "b.py": "X = 1\n",
    "c.py": (
        "def g():\n    return _helper()\n"
        "def _helper():\n    from .sub.e import Y\n    return Y\n"
        "def other():\n    import fakepkg.unused\n"
    ),
    "d.py": "",
    "attr.py": "from fakepkg import c\ndef run():\n    return c.g()\n",
    "bare.py": "from fakepkg import c\nCALLBACKS = [c]\n",
    "unused.py": "import os\n",
    "sub/__init__.py": "",
    "sub/e.py": "from ..b import X as Y\nimport json\n",
    "res/one.txt": "1",
    "res/deep/two.txt": "2",
}


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site" / "fakepkg"
    for rel, text in FAKE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    codedeps.clear_caches()
    yield root
    codedeps.clear_caches()


def _rel(paths: list[str], root: Path) -> set[str]:
    return {Path(p).relative_to(root).as_posix() for p in paths}


def test_function_entry_follows_only_what_it_uses(fake_package):
    got = _rel(code_deps("fakepkg.a:f", package="fakepkg"), fake_package)
    # a's top-level import (b), f's import (c.g -> c._helper -> sub.e, whose relative import
    # brings b), and every parent package; not d (only h imports it), not unused (c.other)
    assert got == {"__init__.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/e.py"}


def test_module_entry_follows_imports_inside_every_function(fake_package):
    got = _rel(code_deps("fakepkg.a", package="fakepkg"), fake_package)
    assert got == {"__init__.py", "a.py", "b.py", "c.py", "d.py", "sub/__init__.py", "sub/e.py"}
    got = _rel(code_deps("fakepkg.c", package="fakepkg"), fake_package)
    assert "unused.py" in got and "a.py" not in got


def test_submodule_follows_the_attributes_read_from_it(fake_package):
    got = _rel(code_deps("fakepkg.attr", package="fakepkg"), fake_package)
    assert got == {"__init__.py", "attr.py", "c.py", "b.py", "sub/__init__.py", "sub/e.py"}
    got = _rel(code_deps("fakepkg.bare", package="fakepkg"), fake_package)
    assert "unused.py" in got  # c passed on as a value: all of it


def test_code_version_follows_content_not_location(fake_package, tmp_path, monkeypatch):
    version = code_version("fakepkg.a:f", package="fakepkg")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", version)
    with open(fake_package / "d.py", "a") as handle:  # not used by a:f
        handle.write("# comment\n")
    codedeps.clear_caches()
    assert code_version("fakepkg.a:f", package="fakepkg") == version
    moved = tmp_path / "elsewhere"
    shutil.copytree(fake_package, moved / "fakepkg")
    monkeypatch.syspath_prepend(str(moved))
    codedeps.clear_caches()
    assert code_deps("fakepkg.a:f", package="fakepkg")[0].startswith(str(moved))
    assert code_version("fakepkg.a:f", package="fakepkg") == version
    with open(moved / "fakepkg" / "sub" / "e.py", "a") as handle:  # used through c.g
        handle.write("# comment\n")
    codedeps.clear_caches()
    assert code_version("fakepkg.a:f", package="fakepkg") != version


def test_data_globs(fake_package):
    got = _rel(code_deps("fakepkg.b", data=["res"], package="fakepkg"), fake_package)
    assert got == {"__init__.py", "b.py", "res/one.txt", "res/deep/two.txt"}
    got = _rel(code_deps("fakepkg.b", data=["res/*.txt"], package="fakepkg"), fake_package)
    assert got == {"__init__.py", "b.py", "res/one.txt"}


@pytest.mark.parametrize(
    "entry, data, message",
    [
        ("fakepkg.nope", [], "'fakepkg.nope': no such module"),
        ("fakepkg.a:nope", [], "'fakepkg.a:nope': fakepkg.a defines no 'nope'"),
        ("json", [], "'json': not a module of 'fakepkg'"),
        ("fakepkg.a", ["res/*.csv"], "data 'res/*.csv': no file"),
    ],
)
def test_bad_entries_name_themselves(fake_package, entry, data, message):
    with pytest.raises(CodeDepsError, match=re.escape(message)):
        code_deps(entry, data=data, package="fakepkg")


def test_stage_entries_split_the_stages_module():
    """stages.py holds three entry points; each depends on its own lazy imports only."""
    root = Path(lorascope.__file__).resolve().parent
    train = _rel(code_deps("lorascope.stages:train_lora"), root)
    evaluate = _rel(code_deps("lorascope.stages:evaluate"), root)
    report = _rel(code_deps("lorascope.report"), root)
    assert {"stages.py", "train.py", "__init__.py"} <= train
    assert not {"evaluate.py", "scoring.py", "switching.py"} & train
    assert {"stages.py", "evaluate.py", "scoring.py", "switching.py"} <= evaluate
    assert "train.py" not in evaluate
    assert "report/figures.py" in report and "train.py" not in report
    for files in (train, evaluate, report):
        assert "cli.py" not in files


def test_static_closure_covers_what_importing_runs():
    """Every lorascope module that importing an entry module loads is in its closure."""
    entries = [
        "lorascope.summarize",
        "lorascope.report",
        "lorascope.first_stage",
        "lorascope.stages",
    ]
    code = (
        "import importlib, sys\n"
        f"for e in {entries!r}: importlib.import_module(e)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'lorascope')))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "lorascope.stages" in loaded
    assert loaded <= set(module_closure(entries)) | {"lorascope.codedeps"}


def copy_package(dest: Path) -> Path:
    """A copy of the imported lorascope package under ``dest`` (as a normal install lays it
    out in site-packages); returns the folder to put on PYTHONPATH."""
    src = Path(lorascope.__file__).resolve().parent
    shutil.copytree(src, dest / "lorascope", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_paths_come_from_the_imported_package(tmp_path):
    site = copy_package(tmp_path / "site")
    code = (
        "from lorascope.codedeps import code_deps\n"
        "print('\\n'.join(code_deps('lorascope.summarize')))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out and all(Path(p).is_relative_to(site / "lorascope") for p in out)
    assert str(site / "lorascope" / "summarize.py") in out


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
        workdir, wf / "Snakefile", site, write_config(small_study(), base / "study.yaml"), env
    )
    start = time.monotonic()
    run.snakemake("--cores", "2")
    seconds = time.monotonic() - start
    assert (workdir / "reports" / "small" / "report.html").is_file()
    yield run
    lines = [
        f"Small study: {len(JOBS)} jobs, first run {seconds:.0f} s. Change -> planned jobs:",
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
    "evaluate",
    "summarize",
    "report",
    "all",
)


def pipeline_order(label: str) -> tuple[int, str]:
    rule = label.split("[")[0]
    return (RULES.index(rule) if rule in RULES else len(RULES), label)


TAIL = frozenset({"summarize", "report", "all"})
ALL_EVALS = frozenset(j for j in JOBS if j.startswith("evaluate["))

CHANGES = [
    Change("nothing", frozenset()),
    Change(
        "training.adapters[0].ranks: [1] -> [1, 2]",
        frozenset(
            {
                f"train_lora[{MODEL}/r2-all]",
                f"extract_adapter[{MODEL}/r2-all/1]",
                f"extract_adapter[{MODEL}/r2-all/2]",
                evaluate_job("r2-all", 1, "checkpoints", "validation"),
                evaluate_job("r2-all", 2, "checkpoints", "validation"),
                evaluate_job("r2-all", 2, "per_layer", "validation"),
            }
        )
        | TAIL,
        edit=lambda raw: raw["training"]["adapters"][0].update(ranks=[1, 2]),
    ),
    Change(
        "sweeps.components.ablations: + mha_only",
        frozenset({evaluate_job("r1-all", 2, "components", "dl19")}) | TAIL,
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
        edit=lambda raw: raw.setdefault("analyses", {}).update(anatomy={}),
    ),
    Change(
        "analyses.lens: {splits: [validation]} (added)",
        frozenset({f"lens[{MODEL}/r1-all/validation]"}) | TAIL,
        edit=lambda raw: raw.setdefault("analyses", {}).update(lens={"splits": ["validation"]}),
    ),
    Change(
        "evaluation.metrics: - AP(rel=2)",
        ALL_EVALS | {"evaluate_first_stage[validation]", "evaluate_first_stage[dl19]"} | TAIL,
        edit=_set("evaluation.metrics", ["nDCG@10", "RR(rel=2)"]),
    ),
    Change(
        "evaluation.significance.test: wilcoxon -> ttest",
        ALL_EVALS | TAIL,
        edit=_set("evaluation.significance.test", "ttest"),
    ),
    Change(
        "data.splits.dl19.depth: 5 -> 6",
        frozenset(
            {
                "prepare_split[dl19]",
                "evaluate_first_stage[dl19]",
                evaluate_job("r1-all", 2, "components", "dl19"),
            }
        )
        | TAIL,
        edit=_set("data.splits.dl19.depth", 6),
    ),
    Change(
        "edit lorascope/train.py",
        frozenset(
            {
                f"train_lora[{MODEL}/r1-all]",
                f"extract_adapter[{MODEL}/r1-all/1]",
                f"extract_adapter[{MODEL}/r1-all/2]",
            }
        )
        | ALL_EVALS
        | TAIL,
        files=("train.py",),
    ),
    Change("edit lorascope/evaluate.py", ALL_EVALS | TAIL, files=("evaluate.py",)),
    Change(
        "edit lorascope/report/figures.py",
        frozenset({"report", "all"}),
        files=("report/figures.py",),
    ),
    Change(
        "edit the embedded DL19 tables (lorascope/resources/trec-dl/dl19.*)",
        frozenset(
            {
                "prepare_split[dl19]",
                "evaluate_first_stage[dl19]",
                evaluate_job("r1-all", 2, "components", "dl19"),
            }
        )
        | TAIL,
        files=tuple(
            f"resources/trec-dl/dl19.{t}.parquet" for t in ("queries", "candidates", "qrels")
        ),
    ),
    Change(
        "touch lorascope/train.py (mtime only, same content)",
        frozenset(),
        files=("train.py",),
        touch_only=True,
    ),
    Change(
        "the same package installed elsewhere (a second copy on PYTHONPATH)",
        frozenset(),
        moved=True,
    ),
]


@pytest.mark.workflow
@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_one_change_plans_exactly_its_jobs(study: StudyRun, change: Change):
    config = None
    if change.edit is not None:
        raw = small_study()
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
    study.table.append((change.name, sorted(planned, key=pipeline_order)))
    assert set(planned) == change.expected, (
        f"unexpected: {sorted(set(planned) - change.expected)}; "
        f"missing: {sorted(change.expected - set(planned))}"
    )
    if paths and not change.touch_only:  # the edited files reach the jobs through params.code
        assert any("Params have changed" in reason for reason in planned.values()), planned
