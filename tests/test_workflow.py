"""The workflow as a user drives it: lint, format, dry runs of every shipped config, bad
configs stopping before any job, and a real run of the data + first-stage stages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_utils import REPO, run_snakemake, snakemake_bin

pytestmark = pytest.mark.workflow

SHIPPED = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


def test_lint_clean(tmp_path):
    proc = subprocess.run([snakemake_bin(), "--lint", "-s", str(REPO / "Snakefile"), "--directory", str(REPO)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_clean():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    assert snakefmt, "snakefmt is not installed"
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    proc = subprocess.run([snakefmt, "--check", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("config", SHIPPED, ids=[p.name for p in SHIPPED])
def test_dry_run_every_shipped_config(tmp_path, config):
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", configfile=config)
    study = yaml.safe_load(config.read_text())
    assert "prepare_split" in proc.stdout and "evaluate_first_stage" in proc.stdout
    assert not (tmp_path / "results").exists()  # a dry run writes nothing
    assert study["study"]


def test_model_jobs_ask_for_the_models_measured_memory(tmp_path):
    """configs/smollm2.yaml's measured mem_mb reach the jobs that load SmolLM2 (times the
    attempt: 1 here); a model without mem_mb (the tiny ones of mechanics.yaml) keeps the
    rules' defaults."""
    import re

    def planned_mem(config):
        proc = run_snakemake(tmp_path, "-n", "-F", "all", configfile=config)
        mem: dict[str, set[int]] = {}
        rule = None
        for line in proc.stdout.splitlines():
            head = re.fullmatch(r"\s*(?:local)?rule (\w+):", line)
            rule = head.group(1) if head else rule
            found = re.search(r"[ ,]mem_mb=(\d+)", line) if "resources:" in line else None
            if found:
                mem.setdefault(rule, set()).add(int(found.group(1)))
        return mem

    measured = yaml.safe_load((REPO / "configs" / "smollm2.yaml").read_text())
    want = measured["models"]["smollm2"]["mem_mb"]
    mem = planned_mem(REPO / "configs" / "smollm2.yaml")
    assert mem["prepare_base"] == {want["prepare"]} and mem["train_lora"] == {want["train"]}
    for rule in ("evaluate", "evaluate_checkpoints", "compare_boundary", "lens"):
        assert mem[rule] == {want["score"]}, rule
    # a model without mem_mb keeps the rules' defaults
    mechanics = planned_mem(REPO / "configs" / "mechanics.yaml")
    assert mechanics["train_lora"] == {16000} and mechanics["evaluate"] == {8000}


def test_bad_config_stops_before_any_job(tmp_path):
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["data"]["splits"]["dl19"]["depth"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = run_snakemake(tmp_path, "--cores", "1", configfile=bad, check=False)
    assert proc.returncode != 0
    assert "config key 'data.splits.dl19.depth': 0 is less than the minimum of 1" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_duplicate_key_and_templating_stop_the_workflow(tmp_path):
    """The workflow reads its config files as strictly as validate-config: a key given twice
    (plain YAML keeps the last) and a YTE template are errors before any job."""
    text = (REPO / "config.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("seed: 13\n", "seed: 13\nseed: 14\n", 1))
    proc = run_snakemake(tmp_path, "-n", configfile=dup, check=False)
    assert proc.returncode != 0 and "duplicate key 'seed'" in proc.stdout + proc.stderr
    yte = tmp_path / "yte.yaml"
    yte.write_text("__use_yte__: true\n" + text)
    proc = run_snakemake(tmp_path, "-n", configfile=yte, check=False)
    assert proc.returncode != 0 and "asks for YTE templating" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_relative_model_path_resolves_from_the_config_file(tmp_path):
    """A model ``path`` relative to the config file works whatever ``--directory`` the
    workflow runs in, as it does for ``lorascope validate-config``."""
    from small_study import MODEL, small_study, write_config

    project = tmp_path / "project"
    (project / "models" / "m").mkdir(parents=True)
    (project / "models" / "m" / "config.json").write_text("{}")
    raw = small_study()
    raw["models"] = {MODEL: {"path": "models/m"}}
    config = write_config(raw, project / "study.yaml")
    run_snakemake(tmp_path / "elsewhere", "-n", "--quiet", "rules", configfile=config)
    checked = subprocess.run([str(Path(sys.executable).parent / "lorascope"), "validate-config",
                              str(config)], capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    raw["models"][MODEL]["path"] = "models/missing"
    config = write_config(raw, project / "study.yaml")
    proc = run_snakemake(tmp_path / "elsewhere", "-n", configfile=config, check=False)
    assert proc.returncode != 0
    assert f"config key 'models.{MODEL}.path': 'models/missing' is not a model directory" in (
        proc.stdout + proc.stderr)


def test_data_and_first_stage_run(tmp_path):
    run_snakemake(tmp_path, "--cores", "2", "data_all", configfile=REPO / "config.yaml")
    root = tmp_path / "results" / "default"
    summary = json.loads((root / "first_stage" / "dl19" / "summary.json").read_text())
    assert round(summary["metrics"]["nDCG@10"], 4) == 0.5058
    run = (root / "first_stage" / "dl19" / "first_stage.run").read_text().splitlines()
    assert len(run) == 43 * 20 and {line.split()[5] for line in run} == {"first_stage.dl19"}
    for split in ("validation", "dl19"):
        for table in ("queries", "candidates", "qrels"):
            assert (root / "data" / split / f"{table}.parquet").is_file()
        assert (root / "logs" / "prepare_split" / f"{split}.log").is_file()
    # validation: 40 DL20 queries at depth 20, held out of the DL21 + DL20 training groups
    import pyarrow.parquet as pq

    validation = set(pq.read_table(root / "data" / "validation" / "queries.parquet")["qid"].to_pylist())
    candidates = pq.read_table(root / "data" / "validation" / "candidates.parquet")
    assert len(validation) == 40 and candidates.num_rows == 40 * 20
    trained = set(pq.read_table(root / "data" / "train_groups.parquet")["qid"].to_pylist())
    assert trained and not validation & trained
    # a second run has nothing to do
    proc = run_snakemake(tmp_path, "-n", "data_all", configfile=REPO / "config.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_analyses_run_end_to_end(tmp_path):
    """Every stage beyond the paper, for real on a trimmed study: SVD compression sweep and
    exports, boundary selection + pruning + comparison, the lens and the anatomy, gathered by
    summarize and rendered in the report."""
    import pandas as pd
    from small_study import small_study, with_analyses, write_config

    config = write_config(with_analyses(small_study()), tmp_path / "study.yaml")
    run_snakemake(tmp_path, "--cores", "2", configfile=config)
    root = tmp_path / "results" / "small"
    summary = root / "summary"
    ev = pd.read_parquet(summary / "evaluations.parquet")
    assert {"svd_r2", "svd_r1"} <= set(ev[ev["sweep"] == "compression"]["ablation"])
    assert set(ev[ev["sweep"] == "boundary_pruned"]["ablation"]) == {"full", "pruned"}
    (row,) = pd.read_parquet(summary / "boundary.parquet").to_dict("records")
    assert row["selection_split"] == "validation" and 0 <= row["b"] < row["num_layers"] == 4
    pruned = root / "boundary" / "tiny-llama" / "r4-all" / "step-2" / "pruned"
    assert json.loads((pruned / "selection.json").read_text())["b"] == row["b"]
    lens = pd.read_parquet(summary / "lens.parquet")
    assert set(lens["step"]) == {0, 1, 2} and set(lens["layer"]) == {1, 2, 3, 4}
    anatomy = pd.read_parquet(summary / "anatomy.parquet")
    assert set(anatomy["adapter"]) == {"r1-all", "r4-all"} and set(anatomy["step"]) == {1, 2}
    # the causal analyses: base (step 0) against the chosen checkpoints, gathered by summarize
    patching = pd.read_parquet(summary / "patching.parquet")
    assert set(patching["step"]) == {0, 2} and set(patching["layer"]) == {0, 1, 2, 3}
    assert set(patching["perturbation"]) == {"tfc1", "query_term_removal", "length_control"}
    assert set(pd.read_parquet(summary / "patching_heads.parquet")["perturbation"]) == {"tfc1"}
    probing = pd.read_parquet(summary / "probing.parquet")
    assert set(probing["step"]) == {0, 1, 2} and set(probing["layer"]) == {1, 2, 3, 4}
    heads = pd.read_parquet(summary / "heads.parquet")
    assert set(heads["step"]) == {0, 1, 2} and set(heads["mode"]) == {"mean"}
    assert len(heads) == 3 * 4 * 2 * heads["measure"].nunique()  # steps x layers x heads
    # the boundary comparison exports both rankings as TREC runs, exact to its metrics
    from helpers import check_run_file, split_qrels

    compared = root / "boundary" / "tiny-llama" / "r4-all" / "step-2" / "dl19"
    metrics = pd.read_parquet(compared / "metrics.parquet")
    sweep = json.loads((compared / "summary.json").read_text())["sweep"]
    for name in ("full", "pruned"):
        reported = {m: dict(zip(g["qid"], g["value"])) for m, g in
                    metrics[metrics["ablation"] == name].groupby("measure")}
        check_run_file(compared / "runs" / f"{name}.run",
                       f"tiny-llama.r4-all.step-2.{sweep}.{name}",
                       split_qrels(root / "data" / "dl19"), reported)
    for rank in (2, 1):
        exported = root / "compressed" / "tiny-llama" / "r4-all" / "step-2" / f"r{rank}"
        assert json.loads((exported / "adapter_config.json").read_text())["r"] == rank
    report = (tmp_path / "reports" / "small" / "report.md").read_text()
    for heading in ("boundary layer", "relevance lens", "LoRA update anatomy",
                    "post-hoc rank compression", "activation patching of axiomatic perturbations",
                    "linear probes for IR features", "attention heads"):
        assert f"Beyond the paper: {heading}" in report
