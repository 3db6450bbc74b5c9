"""Driving snakemake from tests: the CLI in a subprocess, in a temporary working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake_bin() -> str:
    found = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    assert found, "snakemake is not installed"
    return found


def run_snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 1800, check: bool = True
) -> subprocess.CompletedProcess:
    """``snakemake -s <repo>/Snakefile --directory workdir ...``; output captured."""
    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd + list(args))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def copy_package(dest: Path) -> Path:
    """A copy of the imported lorascope package under ``dest`` (as a normal install lays it
    out in site-packages); returns the folder to put on PYTHONPATH."""
    import lorascope

    src = Path(lorascope.__file__).resolve().parent
    shutil.copytree(src, dest / "lorascope", ignore=shutil.ignore_patterns("__pycache__"))
    return dest
