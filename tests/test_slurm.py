"""The SLURM profile (workflow/profiles/slurm) on a real SLURM cluster on this machine.

A trimmed copy of the embedded study runs data preparation -> base model -> training ->
adapter extraction -> evaluation -> summary through ``--workflow-profile
workflow/profiles/slurm``, the report as a local rule. SLURM's own records (sacct, from
slurmdbd) must then show one sbatch submission for every job Snakemake planned (the job list
is read back from each submission's command line) and a GPU request on exactly the
submissions that hold GPU rules. Skipped, with the reason, only where SLURM cannot be
installed (not root, no apt).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from slurm_harness import LocalSlurm, SlurmSettings, SlurmUnavailable, unavailable_reason
from small_study import small_study, write_config
from workflow_utils import REPO, run_snakemake, snakemake_bin

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

PROFILE = REPO / "workflow" / "profiles" / "slurm"
# Short first status check: the plugin then polls every 2 s, +10 s per idle check (~14 s/job).
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "2")
RUN_LIMIT_S = 480  # `timeout -k` around each snakemake run: a status hang fails, never blocks


def slurm_study() -> dict:
    """The small test study trimmed further: one split, one checkpoint, one short sweep."""
    raw = small_study("slurm")
    raw["data"]["splits"] = {"dl19": raw["data"]["splits"]["dl19"]}
    raw["evaluation"]["splits"] = ["dl19"]
    raw["evaluation"]["convergence"]["split"] = "dl19"
    raw["training"]["steps"] = [2]
    raw["sweeps"] = {
        "components": {
            "adapters": ["r1-all"],
            "splits": ["dl19"],
            "ablations": {"no_lora": {"drop": "all"}},
        }
    }
    return raw


# ----------------------------------------------------------------------------- the plan


def planned_jobs(dry_run_stdout: str) -> list[dict]:
    """Jobs of a ``snakemake -n`` listing: rule, wildcards, gpu."""
    jobs: list[dict] = []
    for line in dry_run_stdout.splitlines():
        text = line.strip()
        head = re.fullmatch(r"(?:local)?rule (\w+):", text)
        if head:
            jobs.append({"rule": head.group(1), "wildcards": {}, "gpu": 0})
        elif jobs and text.startswith("wildcards:"):
            jobs[-1]["wildcards"] = dict(
                kv.split("=", 1) for kv in text.split(":", 1)[1].strip().split(", ")
            )
        elif jobs and text.startswith("resources:"):
            match = re.search(r"(?:^|[ ,])gpu=(\d+)", text.split(":", 1)[1])
            jobs[-1]["gpu"] = int(match.group(1)) if match else 0
    return jobs


def job_key(rule: str, wildcards: dict[str, str]) -> str:
    return rule + ":" + ",".join(f"{k}={v}" for k, v in sorted(wildcards.items()))


def submitted_targets(submit_line: str) -> list[str]:
    """The jobs one sbatch submission runs: the ``--target-jobs`` of the wrapped snakemake call."""
    # SLURM stores the submission's argv joined by spaces: --wrap=<the snakemake command>
    words = shlex.split(submit_line.split("--wrap", 1)[1].lstrip("="))
    start = words.index("--target-jobs") + 1
    targets = []
    for word in words[start:]:
        if word.startswith("--"):
            break
        rule, _, spec = word.partition(":")
        targets.append(job_key(rule, dict(kv.split("=", 1) for kv in spec.split(",") if kv)))
    return targets


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"SLURM cannot be installed on this machine: {reason}")
    harness = LocalSlurm(SlurmSettings(state_dir=tmp_path_factory.mktemp("local-slurm")))
    try:
        harness.start()
    except SlurmUnavailable as err:
        pytest.skip(f"SLURM cannot be installed on this machine: {err}")
    try:
        yield harness
    finally:
        harness.stop()


def run_on_slurm(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    """snakemake with the SLURM profile, inside ``timeout -k`` (a status hang ignores SIGTERM)."""
    cmd = [
        "timeout",
        "-k",
        "10",
        str(RUN_LIMIT_S),
        snakemake_bin(),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--workflow-profile",
        str(PROFILE),
        *FAST_STATUS,
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = (
        str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    )  # jobs inherit it
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=RUN_LIMIT_S + 60, check=False
    )


# ----------------------------------------------------------------------------- tests


def test_profile_covers_the_workflow(tmp_path):
    """Every rule the profile names exists; every GPU rule of the default study has a profile
    entry sending it to the GPU partition (the anchor), CPU rules do not."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert {"slurm_account", "slurm_partition"} <= set(profile["default-resources"])
    rules = set(
        run_snakemake(tmp_path, "--list-rules", configfile=REPO / "config.yaml").stdout.split()
    )
    named = set(profile["set-resources"]) | set(profile["set-threads"]) | set(profile["groups"])
    assert named <= rules, f"profile names rules the workflow lacks: {named - rules}"

    plan = planned_jobs(
        run_snakemake(
            tmp_path, "-n", "--workflow-profile", str(PROFILE), configfile=REPO / "config.yaml"
        ).stdout
    )
    gpu_rules = {j["rule"] for j in plan if j["gpu"] > 0}
    cpu_rules = {j["rule"] for j in plan if j["gpu"] == 0 and j["rule"] != "all"}
    assert {"train_lora", "evaluate"} <= gpu_rules
    gpu_partition = profile["set-resources"]["train_lora"]["slurm_partition"]
    for rule in gpu_rules:
        assert profile["set-resources"].get(rule, {}).get("slurm_partition") == gpu_partition, rule
    for rule in cpu_rules:
        assert "slurm_partition" not in profile["set-resources"].get(rule, {}), rule


def test_study_runs_through_sbatch_with_gpus_for_gpu_rules(cluster, tmp_path):
    config = write_config(slurm_study(), tmp_path / "study.yaml")
    dry = run_on_slurm(tmp_path, config, "-n")
    assert dry.returncode == 0, dry.stderr[-4000:]
    plan = planned_jobs(dry.stdout)
    assert {j["rule"] for j in plan} >= {
        "prepare_train",
        "prepare_split",
        "evaluate_first_stage",
        "prepare_base",
        "train_lora",
        "extract_adapter",
        "evaluate",
        "summarize",
        "report",
    }

    t0 = time.monotonic()
    proc = run_on_slurm(tmp_path, config)
    wall = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake on SLURM failed ({proc.returncode}):\n{output[-6000:]}"
    log.info("snakemake --workflow-profile slurm: %d jobs in %.0f s", len(plan), wall)

    # only the report (a localrule) and the target rule `all` ran on this machine
    local_rules = set(re.findall(r"^localrule (\w+):", output, flags=re.MULTILINE))
    assert local_rules == {"report", "all"}, local_rules
    remote = {job_key(j["rule"], j["wildcards"]): j for j in plan if j["rule"] not in local_rules}

    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    job_ids = set(re.findall(r"submitted with SLURM jobid (\d+)", output))
    records = cluster.wait_for_sacct(job_ids, name=run_id)
    assert {r["JobIDRaw"] for r in records} == job_ids, (records, job_ids)

    submitted: Counter[str] = Counter()
    evidence = [f"snakemake --workflow-profile workflow/profiles/slurm: {len(plan)} jobs "
                f"({len(job_ids)} sbatch submissions) in {wall:.0f} s; SLURM run {run_id}"]
    for record in records:
        targets = submitted_targets(record["SubmitLine"])
        submitted.update(targets)
        assert record["State"] == "COMPLETED" and record["ExitCode"] == "0:0", record
        assert record["SubmitLine"].startswith("sbatch "), record
        gpus = max(remote[t]["gpu"] for t in targets)
        if gpus:
            assert f"--gpus={gpus}" in record["SubmitLine"], record
            assert f"gres/gpu={gpus}" in record["AllocTRES"], record
        else:
            assert "--gpus" not in record["SubmitLine"].split("--wrap")[0], record
            assert "gres/gpu" not in record["AllocTRES"], record
        line = (
            f"sacct {record['JobIDRaw']} {record['State']} AllocTRES={record['AllocTRES']} | "
            f"{record['SubmitLine'].split(' --wrap')[0]} | targets={targets}"
        )
        evidence.append(line)
        log.info("%s", line)  # run with -o log_cli=true -o log_cli_level=INFO to see it
    if os.environ.get("LORASCOPE_SLURM_EVIDENCE"):  # .ci/run prints it
        Path(os.environ["LORASCOPE_SLURM_EVIDENCE"]).write_text("\n".join(evidence) + "\n")
    # every planned non-local job went through exactly one sbatch submission
    assert submitted == Counter(remote.keys()), (submitted, list(remote))
    # the evaluations shared an allocation (the profile's `evaluation` group)
    evaluations = [
        r
        for r in records
        if any(t.startswith("evaluate:") for t in submitted_targets(r["SubmitLine"]))
    ]
    assert len(evaluations) == 1 and len(submitted_targets(evaluations[0]["SubmitLine"])) == sum(
        1 for j in remote.values() if j["rule"] == "evaluate"
    )
    # the local report rule ran here, after the summary came back from the cluster
    assert (tmp_path / "reports" / "slurm" / "report.html").is_file()
    finished = {line.get("JobId") for line in cluster.jobcomp() if line.get("Name") == run_id}
    assert job_ids <= finished


def test_squeue_status_for_clusters_without_slurmdbd(cluster, tmp_path):
    """The README's setting for clusters without accounting: job status from squeue."""
    config = write_config(slurm_study(), tmp_path / "study.yaml")
    proc = run_on_slurm(
        tmp_path,
        config,
        "--slurm-status-command",
        "squeue",
        "results/slurm/data/train_groups.parquet",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Falling back to 'sacct'" not in output
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    (job_id,) = re.findall(r"submitted with SLURM jobid (\d+)", output)
    (record,) = cluster.wait_for_sacct({job_id}, name=run_id)
    assert record["State"] == "COMPLETED"
    assert submitted_targets(record["SubmitLine"]) == ["prepare_train:study=slurm"]
