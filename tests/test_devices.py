"""GPU device choice per job (lorascope.core.devices), tested without a GPU: device slots are lock
files, so concurrent processes, exits and kept environments behave as on a GPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from workflow_utils import REPO, run_snakemake, snakemake_bin

from lorascope.core import devices

HOLDER = textwrap.dedent(
    """
    import os, sys
    from lorascope.core.devices import claim
    c = claim(int(sys.argv[1]), timeout=float(sys.argv[2]), poll_seconds=0.05)
    print(os.environ["CUDA_VISIBLE_DEVICES"], c.source, flush=True)
    sys.stdin.readline()  # hold the devices until the test says go
    """
)


def _env(tmp_path: Path, slots: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (devices.VISIBLE, "SLURM_JOB_ID")}
    env.update({devices.SLOTS_ENV: slots, devices.LOCK_DIR_ENV: str(tmp_path / "locks")}, **extra)
    return env


def _holder(env: dict[str, str], n: int = 1, timeout: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(n), str(timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return line


def _finish(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_concurrent_processes_get_distinct_devices_and_exit_frees_them(tmp_path):
    env = _env(tmp_path, "2")
    a = _holder(env)
    first = _first_line(a)
    b = _holder(env)
    second = _first_line(b)
    assert {first, second} == {"0 lock", "1 lock"}

    # both devices held: a third job waits, then gives up at its timeout
    c = _holder(env, timeout=0.5)
    assert c.wait(timeout=30) != 0
    assert "TimeoutError" in c.stderr.read()

    _finish(a)  # the process ends: its device is free again
    d = _holder(env)
    assert _first_line(d) == first
    _finish(b)
    _finish(d)


def test_two_devices_for_one_job_and_no_hold_and_wait(tmp_path):
    env = _env(tmp_path, "0,2,5")
    a = _holder(env, n=1)
    assert _first_line(a) == "0 lock"
    b = _holder(env, n=2)
    assert _first_line(b) == "2,5 lock"
    c = _holder(env, n=2, timeout=0.5)  # one device would be free: it must not keep it
    assert c.wait(timeout=30) != 0
    d = _holder(env, n=1)
    _finish(a)
    assert _first_line(d) == "0 lock"
    _finish(b)
    _finish(d)


def test_scheduler_or_caller_assignment_is_kept_and_still_locked(tmp_path):
    """Devices assigned by a scheduler or the caller are used as given - and locked, so two
    jobs told to use the same device do not share it (finding 5 of the adversarial review)."""
    slurm = {devices.VISIBLE: "0", "SLURM_JOB_ID": "42", "SLURM_STEP_GPUS": "3",
             devices.SLOTS_ENV: "4"}
    got = devices.claim(1, env=slurm, lock_dir=tmp_path)
    assert (got.source, got.devices, slurm[devices.VISIBLE]) == ("scheduler", ("0",), "0")
    assert [p.name for p in got.lock_paths] == ["gpu-3.lock"]  # the physical device
    got.release()

    caller = {devices.VISIBLE: "3"}
    first = devices.claim(1, env=caller, lock_dir=tmp_path)
    assert (first.source, caller[devices.VISIBLE]) == ("environment", "3")
    with pytest.raises(TimeoutError, match=r"no 1 free GPU\(s\) of 3 within 0 s; held by: 3 "
                                           r"\(pid \d+\)"):
        devices.claim(1, env={devices.VISIBLE: "3"}, lock_dir=tmp_path, timeout=0)
    first.release()
    devices.claim(1, env={devices.VISIBLE: "3"}, lock_dir=tmp_path, timeout=0).release()


def test_timeout_from_the_environment(tmp_path):
    held = devices.claim(1, env={devices.VISIBLE: "5"}, lock_dir=tmp_path)
    with pytest.raises(TimeoutError, match="LORASCOPE_GPU_TIMEOUT sets the wait"):
        devices.claim(1, env={devices.VISIBLE: "5", devices.TIMEOUT_ENV: "0.2"},
                      lock_dir=tmp_path, poll_seconds=0.05)
    with pytest.raises(ValueError, match="LORASCOPE_GPU_TIMEOUT='soon': expected seconds"):
        devices.claim(1, env={devices.VISIBLE: "5", devices.TIMEOUT_ENV: "soon"},
                      lock_dir=tmp_path)
    held.release()


def test_lock_directory_and_files_are_private(tmp_path):
    """A symlinked lock file is refused and its target left untouched; a lock directory of
    another mode or kind is refused; a new one is created 0700."""
    fresh = tmp_path / "new" / "locks"
    devices.claim(1, env={devices.VISIBLE: "0"}, lock_dir=fresh).release()
    assert (fresh.stat().st_mode & 0o777) == 0o700

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    links = tmp_path / "links"
    links.mkdir(mode=0o700)
    (links / "gpu-0.lock").symlink_to(target)
    with pytest.raises(devices.LockDirError, match="without following links"):
        devices.claim(1, env={devices.VISIBLE: "0"}, lock_dir=links)
    assert target.read_text() == "keep me\n"

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(devices.LockDirError, match="writable by others"):
        devices.claim(1, env={devices.VISIBLE: "0"}, lock_dir=shared)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "alias").symlink_to(real)
    with pytest.raises(devices.LockDirError, match="not a directory"):
        devices.claim(1, env={devices.VISIBLE: "0"}, lock_dir=tmp_path / "alias")


def test_a_wider_visible_list_is_the_pool(tmp_path):
    env = {devices.VISIBLE: "4,7"}
    one = devices.claim(1, env=env, lock_dir=tmp_path, timeout=0)
    assert env[devices.VISIBLE] == "4" and one.source == "lock"
    env2 = {devices.VISIBLE: "4,7"}
    two = devices.claim(1, env=env2, lock_dir=tmp_path, timeout=0)
    assert env2[devices.VISIBLE] == "7"
    with pytest.raises(TimeoutError, match="no 1 free GPU"):
        devices.claim(1, env={devices.VISIBLE: "4,7"}, lock_dir=tmp_path, timeout=0)
    one.release()
    again = devices.claim(1, env={devices.VISIBLE: "4,7"}, lock_dir=tmp_path, timeout=0)
    assert again.devices == ("4",)
    two.release()
    again.release()


def test_no_gpu_declared_hides_gpus_and_no_gpu_found_runs_on_cpu(tmp_path, monkeypatch):
    env: dict[str, str] = {}
    assert devices.claim(0, env=env).source == "none"
    assert env[devices.VISIBLE] == ""
    kept = {devices.VISIBLE: "0"}
    devices.claim(0, env=kept)
    assert kept[devices.VISIBLE] == "0"  # someone else's setting stays

    monkeypatch.setattr(devices, "NVIDIA_PROC", tmp_path / "no-driver")
    env = {}
    got = devices.claim(1, env=env, lock_dir=tmp_path)
    assert got.source == "none" and devices.VISIBLE not in env


@pytest.mark.parametrize(
    "env, n, message",
    [
        ({devices.SLOTS_ENV: "2"}, 3, "--gpus 3: only 2 GPU"),
        ({devices.SLOTS_ENV: "0,,1"}, 1, "LORASCOPE_GPU_SLOTS='0,,1'"),
        ({devices.SLOTS_ENV: "0,0"}, 1, "listed twice"),
        ({}, -1, "cannot be negative"),
    ],
)
def test_bad_requests_name_the_setting(tmp_path, env, n, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        devices.claim(n, env=dict(env), lock_dir=tmp_path)


def test_cli_sets_the_device_before_the_subcommand(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys
        from lorascope import cli
        rc = cli.main(["--gpus", "1", "validate-config", "no-such-config.yaml"])
        print(rc, os.environ["CUDA_VISIBLE_DEVICES"], "torch" in sys.modules)
        """
    )
    env = _env(tmp_path, "0,1")
    blocker = _holder(env)
    assert _first_line(blocker) == "0 lock"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    _finish(blocker)
    rc, visible, torch_loaded = proc.stdout.split()
    assert rc == "1"  # the missing config is reported as one line, after the device choice
    assert visible == "1" and torch_loaded == "False"
    assert "CUDA_VISIBLE_DEVICES=1" in proc.stderr and "no-such-config.yaml" in proc.stderr


# --------------------------------------------------------------------------- local executor

GPU_JOB = textwrap.dedent(
    """
    import os, sys, time
    from lorascope.core.devices import claim
    claim(1, timeout=0)  # fails at once if the device this job should get is busy
    start = time.time()
    os.makedirs("started", exist_ok=True)
    open(f"started/{os.getpid()}", "w").close()
    while len(os.listdir("started")) < 2 and time.time() < start + 20:
        time.sleep(0.05)  # the first two jobs meet: they overlap whatever the machine's load
    time.sleep(0.3)
    with open(sys.argv[1], "w") as out:
        out.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start} {time.time()}")
    """
)

GPU_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: expand("done/{i}.txt", i=range(4))

    rule gpu_job:
        output: "done/{i}.txt"
        resources: gpu=1
        shell: "python gpu_job.py {output}"
    """
)


@pytest.mark.workflow
def test_local_gpu_limit_and_device_per_job(tmp_path):
    """``--cores 4 --resources gpu=2``: never more than 2 GPU jobs at once, and jobs that overlap
    in time hold different devices."""
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    (tmp_path / "gpu_job.py").write_text(GPU_JOB)
    env = _env(tmp_path, "2")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    proc = subprocess.run(
        [snakemake_bin(), "--cores", "4", "--resources", "gpu=2", "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = []
    for i in range(4):
        device, start, end = (tmp_path / "done" / f"{i}.txt").read_text().split()
        runs.append((device, float(start), float(end)))
    overlapping = 0
    for device, start, end in runs:
        running = [r for r in runs if r[1] < end and start < r[2]]  # includes itself
        assert len(running) <= 2, runs
        assert len({r[0] for r in running}) == len(running), runs
        overlapping = max(overlapping, len(running))
    assert overlapping == 2  # the limit, not a serial run, is what kept them apart


@pytest.mark.workflow
def test_dry_run_gpu_rules_declare_their_gpus(tmp_path):
    """Every job of the study's GPU rules asks for a GPU in the plan (so ``--resources gpu=N``
    caps them at N at a time) and CPU rules ask for none."""
    proc = run_snakemake(
        tmp_path, "-n", "--cores", "4", "--resources", "gpu=1", configfile=REPO / "config.yaml"
    )
    gpus: dict[str, set[str]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            fields = dict(
                part.split("=", 1)
                for part in line.split(":", 1)[1].strip().split(", ")
                if "=" in part
            )
            gpus.setdefault(rule, set()).add(fields.get("gpu", "undeclared"))
    assert gpus["train_lora"] == {"1"} and gpus["evaluate"] == {"1"}, gpus
    assert gpus["prepare_split"] == {"0"} and gpus["prepare_base"] == {"0"}, gpus
    assert all("undeclared" not in v for r, v in gpus.items() if r != "all"), gpus
