"""Code dependencies (:mod:`lorascope.study.codedeps`): which package files a stage entry point
runs, found statically, on a synthetic package and on lorascope itself, and a content hash of
them that does not depend on where the package is installed. (What a change then reruns in a
real workflow is tests/test_reruns.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_utils import copy_package

import lorascope
from lorascope.study import codedeps
from lorascope.study.codedeps import CodeDepsError, code_deps, code_version, module_closure

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


#: Every stage's code-version entry point, as the rules declare it.
STAGE_ENTRIES = {
    "prepare_train": "lorascope.data.prepare:prepare_train",
    "prepare_split": "lorascope.data.prepare:prepare_split",
    "evaluate_first_stage": "lorascope.first_stage",
    "prepare_base": "lorascope.models.stage:prepare_base",
    "train_lora": "lorascope.training.stage:train_lora",
    "extract_adapter": "lorascope.extraction:extract_adapter",
    "evaluate": "lorascope.evaluate:evaluate",
    "lens": "lorascope.analyses.lens.stage:lens",
    "anatomy": "lorascope.analyses.anatomy.stage:anatomy",
    "prune_boundary": "lorascope.analyses.boundary.prune:prune_boundary",
    "compare_boundary": "lorascope.analyses.boundary.compare:compare_boundary",
    "export_compressed": "lorascope.analyses.compression.stage:export_compressed",
    "patching": "lorascope.analyses.patching.stage:patching",
    "probing": "lorascope.analyses.probing.stage:probing",
    "heads": "lorascope.analyses.heads.stage:heads",
    "summarize": "lorascope.summarize",
    "report": "lorascope.report",
}


def _stage_files() -> dict[str, set[str]]:
    root = Path(lorascope.__file__).resolve().parent
    return {rule: _rel(code_deps(entry), root) for rule, entry in STAGE_ENTRIES.items()}


def test_no_stage_runs_the_study_side():
    """Parsing, slicing and planning the config (lorascope/study/) is DAG-build code: editing it
    reruns no job. Nor does the command line (it only dispatches)."""
    for rule, files in _stage_files().items():
        assert not {f for f in files if f.startswith("study/")}, rule
        assert "cli.py" not in files, rule


def test_each_stage_runs_only_its_own_code():
    files = _stage_files()
    # training does not run evaluation code, evaluation not training code
    assert {"training/stage.py", "training/loop.py", "__init__.py"} <= files["train_lora"]
    assert not {"evaluate.py", "core/scoring.py", "core/switching.py"} & files["train_lora"]
    assert {"evaluate.py", "core/scoring.py", "core/switching.py", "core/results.py"} <= files[
        "evaluate"]
    assert not {f for f in files["evaluate"] if f.startswith("training/")}
    # the sweep loop is the evaluate stage's alone: the lens and the boundary comparison
    # share the scoring toolkit (core/results, models/adapted, data/splits), not the loop
    for rule in ("lens", "compare_boundary", "prune_boundary", "anatomy", "export_compressed",
                 "patching", "probing", "heads"):
        assert "evaluate.py" not in files[rule], rule
    assert {"core/results.py", "models/adapted.py", "data/splits.py"} <= files["lens"]
    assert {"core/results.py", "models/adapted.py", "data/splits.py"} <= files["compare_boundary"]
    # an analysis's stage runs its own folder and no other analysis's
    analyses = {"lens": "lens", "anatomy": "anatomy", "prune_boundary": "boundary",
                "compare_boundary": "boundary", "export_compressed": "compression",
                "patching": "patching", "probing": "probing", "heads": "heads"}
    # the layer readout is shared by the lens and the probes; attention heads by two analyses
    assert "core/readout.py" in files["lens"] and "core/readout.py" in files["probing"]
    assert "core/heads.py" in files["heads"] and "core/heads.py" in files["patching"]
    for rule, own in analyses.items():
        folders = {f.split("/")[1] for f in files[rule]
                   if f.startswith("analyses/") and f.count("/") > 1}
        assert folders == {own}, (rule, folders)
    # the report runs no stage module; the summary reads no report section
    assert "report/figures.py" in files["report"] and "training/loop.py" not in files["report"]
    assert not {f for f in files["summarize"] if f.startswith("report/")}


def test_summary_and_report_code_versions_name_every_analysis_part():
    """The summary and the report load each analysis's part by name at run time; their rules'
    code versions list those modules explicitly, so editing one reruns them."""
    from lorascope.analyses.registry import ANALYSES, modules

    root = Path(lorascope.__file__).resolve().parent
    report = _rel(code_deps(STAGE_ENTRIES["report"], *modules("report")), root)
    for analysis in ANALYSES:
        assert f"analyses/{analysis.name}/report.py" in report
    summary = _rel(code_deps(STAGE_ENTRIES["summarize"], *modules("summary")), root)
    assert "analyses/boundary/summary.py" in summary
    assert not {f for f in summary if f.endswith("/report.py")}


def test_static_closure_covers_what_importing_runs():
    """Every lorascope module that importing an entry module loads is in its closure."""
    entries = list(STAGE_ENTRIES.values())
    code = (
        "import importlib, sys\n"
        f"for e in {entries!r}: importlib.import_module(e.partition(':')[0])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'lorascope')))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "lorascope.analyses.lens.stage" in loaded
    assert loaded <= set(module_closure([e.partition(":")[0] for e in entries]))


def test_paths_come_from_the_imported_package(tmp_path):
    site = copy_package(tmp_path / "site")
    code = (
        "from lorascope.study.codedeps import code_deps\n"
        "print('\\n'.join(code_deps('lorascope.summarize')))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out and all(Path(p).is_relative_to(site / "lorascope") for p in out)
    assert str(site / "lorascope" / "summarize.py") in out
