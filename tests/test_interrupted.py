"""Training jobs killed mid-run and rerun, and a training setting changed after a run, through
Snakemake as a user drives it (findings 2 and 3 of issue 13).

Whichever process is killed - Snakemake itself (SIGKILL: nothing of Snakemake's cleanup runs)
or the trainer - no trainer outlives the kill, and ``--rerun-incomplete`` ends with adapters
bitwise equal to an uninterrupted run's. A changed ``training.lr`` reruns training and
publishes the new run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_study import MODEL, small_study, write_config
from workflow_utils import REPO, run_snakemake, snakemake_bin

pytestmark = pytest.mark.workflow

STEPS = [4, 400, 800]  # ~10 s of training after the kill: an orphan would still hold the lock
ADAPTER = f"results/small/adapters/{MODEL}/r1-all/step-{STEPS[-1]}"
WORK = f"results/small/work/train/{MODEL}/r1-all"
PUBLISHED = f"results/small/train/{MODEL}/r1-all"


def _config(tmp_path: Path, **training) -> Path:
    raw = small_study()
    raw["training"].update(steps=STEPS, **training)
    return write_config(raw, tmp_path / "study.yaml")


def _adapter_digest(workdir: Path) -> str:
    files = sorted((workdir / ADAPTER).glob("adapter_*"))
    assert [f.name for f in files] == ["adapter_config.json", "adapter_model.safetensors"]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _lock_is_free(work: Path, within_s: float) -> bool:
    """Whether the work dir's trainer lock can be taken within ``within_s`` seconds."""
    from lorascope.training.state import WorkDirBusy, WorkDirLock

    deadline = time.monotonic() + within_s
    while True:
        try:
            with WorkDirLock(work):
                return True
        except WorkDirBusy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The digest of the last adapter of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    run_snakemake(workdir, "-c1", ADAPTER, configfile=_config(workdir))
    return _adapter_digest(workdir)


@pytest.mark.parametrize("killed", ["snakemake", "trainer"])
def test_killed_training_reruns_to_the_uninterrupted_adapter(tmp_path, reference, killed) -> None:
    config = _config(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "-c1", ADAPTER, "--configfile", str(config)]
    work = tmp_path / WORK
    state = work / "state" / "state.json"
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while not state.is_file():  # the first checkpoint's state: mid-training
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.02)
            if killed == "snakemake":
                proc.send_signal(signal.SIGKILL)
            else:
                os.kill(int((work / ".lock").read_text()), signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode != 0
    assert not (tmp_path / ADAPTER).exists()
    assert _lock_is_free(work, within_s=2), "a trainer outlived the kill"
    before = _snapshot(work)
    time.sleep(1.5)
    assert _snapshot(work) == before, "something still writes into the work dir"

    run_snakemake(tmp_path, "--unlock", configfile=config)
    rerun = run_snakemake(tmp_path, "-c1", "--rerun-incomplete", ADAPTER, configfile=config)
    log = (tmp_path / f"results/small/logs/train_lora/{MODEL}/r1-all.log").read_text()
    assert "resuming" in log, rerun.stderr[-3000:]
    assert _adapter_digest(tmp_path) == reference


def test_a_changed_lr_retrains_and_publishes(tmp_path, reference) -> None:
    """Finding 3: after ``training.lr`` changes, the job used to fail ("holds the state of a
    run with other settings") after Snakemake had deleted the published run; now it trains
    afresh and publishes."""
    run_snakemake(tmp_path, "-c1", ADAPTER, configfile=_config(tmp_path))
    assert _adapter_digest(tmp_path) == reference
    config = _config(tmp_path, lr=5e-4)
    proc = run_snakemake(tmp_path, "-c1", ADAPTER, configfile=config)
    assert "train_lora" in proc.stderr
    log = (tmp_path / f"results/small/logs/train_lora/{MODEL}/r1-all.log").read_text()
    assert "holds the state of another run (it differs in: settings)" in log
    first_row = (tmp_path / PUBLISHED / "train_log.csv").read_text().splitlines()[1]
    assert first_row.split(",")[2] == "0.0005"
    assert _adapter_digest(tmp_path) != reference
    assert (tmp_path / PUBLISHED / f"step-{STEPS[-1]}" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_job_whose_snakemake_already_ended_does_not_start() -> None:
    """The rules pass the shell's $PPID: a lorascope started after that process ended (here:
    a PID that is not its parent) exits before doing anything, instead of running orphaned."""
    lorascope = Path(sys.executable).parent / "lorascope"
    ok = subprocess.run(
        ["bash", "-c", f"exec {lorascope} --die-with-parent=$PPID validate-config config.yaml"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    gone = subprocess.run(
        [str(lorascope), f"--die-with-parent={os.getpid() + 999_999}", "validate-config",
         "config.yaml"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert gone.returncode != 0
    assert "ended; not starting" in gone.stderr
