"""Bring your own, through Snakemake as a user runs it: one study on a tiny BERT (the MiniLM
family, a local ``path`` model) that holds

* an adapter trained outside lorascope (plain peft + transformers, a few steps) imported
  beside a lorascope-trained adapter of the same base, both through the components sweep, the
  checkpoint curves, the lens and the anatomy;
* a split reranking a TREC run file written from another ranker's scores (DL20 as files);
* a BEIR-style ir_datasets split (a fake ``beir/scifact`` in a pre-placed
  ``IR_DATASETS_HOME``) whose first stage is a run file.

The imported adapter's scores must equal plain peft loading (atol 1e-6).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_base, build_fake_beir, train_plain_peft, write_beir_run, write_own_files
from small_study import small_study, write_config
from workflow_utils import run_snakemake

pytestmark = pytest.mark.workflow


def _study(root: Path) -> dict:
    base = build_base(root / "models" / "tinybert", "bert")
    train_plain_peft(base, root / "external-lora")
    write_own_files(root / "dl20-overlap", queries_n=5, run_depth=20)
    write_beir_run(root / "scifact-bm25.trec")
    raw = small_study("byo")
    raw["models"] = {"tinybert": {
        "label": "tiny BERT", "path": "models/tinybert",
        "imported": {"external": {"path": "external-lora", "step": 3}},
    }}
    own = root / "dl20-overlap"
    raw["data"]["splits"]["mine"] = {
        "source": "files", "dataset": "dl20-overlap", "depth": 10,
        "run": str(own / "run.trec"), "topics": str(own / "topics.tsv"),
        "qrels": str(own / "qrels.txt"), "collection": str(own / "collection.jsonl"),
    }
    raw["data"]["splits"]["scifact"] = {"source": "ir_datasets", "dataset": "beir/scifact/test",
                                        "depth": 5, "run": "scifact-bm25.trec"}
    raw["evaluation"]["precision"] = "fp32"  # compared with plain fp32 peft below
    raw["training"]["max_length"] = 64  # BERT pairs: room for the query and some passage
    raw["sweeps"] = {"components": {
        "adapters": ["external", "r1-all"],  # the first named is the one Table 3 shows
        "splits": ["dl19", "mine", "scifact"],
        "ablations": {"no_lora": {"drop": "all"}, "mlp_only": {"keep": {"component": "mlp"}}},
    }}
    raw["analyses"] = {"lens": {"splits": ["validation"]}, "anatomy": {}}
    raw["report"]["main_split"] = "mine"  # the paper's tables and figures on your own run
    return raw


def test_imported_adapter_own_run_and_beir_split_end_to_end(tmp_path, monkeypatch) -> None:
    import pandas as pd
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lorascope.core.scoring import PreparedPairs
    from lorascope.data.splits import read_split
    from lorascope.models.reranker import load_reranker

    project = tmp_path / "project"
    config = write_config(_study(project), project / "study.yaml")
    monkeypatch.setenv("IR_DATASETS_HOME", str(build_fake_beir(tmp_path / "irds")))
    monkeypatch.setenv("IR_DATASETS_SKIP_DISK_FREE", "true")
    monkeypatch.setenv("IR_DATASETS_DL_TRIES", "1")
    work = tmp_path / "work"
    run_snakemake(work, "--cores", "2", configfile=config)
    root = work / "results" / "byo"

    ev = pd.read_parquet(root / "summary" / "evaluations.parquet")
    swept = ev[ev["sweep"] == "components"]
    assert {(a, s) for a, s in zip(swept["adapter"], swept["split"])} == {
        (a, s) for a in ("r1-all", "external") for s in ("dl19", "mine", "scifact")}
    assert set(swept[swept["adapter"] == "external"]["step"]) == {3}
    curves = ev[ev["sweep"] == "checkpoints"]
    assert set(curves[curves["adapter"] == "external"]["step"]) == {3}
    assert set(pd.read_parquet(root / "summary" / "lens.parquet")["adapter"]) == {
        "r1-all", "external"}
    assert set(pd.read_parquet(root / "summary" / "anatomy.parquet")["adapter"]) == {
        "r1-all", "external"}
    report = (work / "reports" / "byo" / "report.md").read_text()
    assert "MRR / nDCG@10 of adapter `external` (checkpoint step 3)" in report
    assert "run run.trec top-10 reranked" in report and "| run run.trec (first stage) |" in report
    assert "dashed: run run.trec." in report  # the figures name the run too, not BM25

    # the imported adapter scores as plain peft loading of the original directory
    split_dir = root / "data" / "dl19"
    scores = pd.read_parquet(root / "eval" / "tinybert" / "external" / "step-3" / "components"
                             / "dl19" / "scores.parquet")
    full = scores[scores["ablation"] == "full"]
    ours = dict(zip(zip(full["qid"], full["docid"]), full["score"]))
    queries, candidates, _ = read_split(split_dir)
    _, tokenizer, arch = load_reranker(root / "models" / "tinybert" / "base")
    plain = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(project / "models" / "tinybert",
                                                           num_labels=1),
        project / "external-lora")
    plain.config.pad_token_id = tokenizer.pad_token_id
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=_max_length(root), batch_tokens=4096)
    theirs = prepared.score(plain, progress=False)
    assert ours.keys() == theirs.keys()
    torch.testing.assert_close(torch.tensor([ours[k] for k in theirs]),
                               torch.tensor(list(theirs.values())), atol=1e-6, rtol=0)

    # the own-run split reranks the run's top 10; the BEIR split the run's top 5
    mine = pd.read_parquet(root / "data" / "mine" / "candidates.parquet")
    assert mine.groupby("qid").size().max() == 10 and mine["qid"].nunique() == 5
    beir = pd.read_parquet(root / "data" / "scifact" / "candidates.parquet")
    assert list(beir[beir["qid"] == "1"]["docid"]) == ["d0", "d1", "d2", "d3", "d4"]


def _max_length(root: Path) -> int:
    import json

    summary = json.loads((root / "eval" / "tinybert" / "external" / "step-3" / "components"
                          / "dl19" / "summary.json").read_text())
    return int(summary["scoring"]["max_length"])
