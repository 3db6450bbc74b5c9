"""The evaluate stage end to end: a tiny adapter on disk, a tiny split, three outputs."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import (build_adapter, build_base, check_run_file, load_adapted,
                     reference_trec_eval, split_qrels, toy_pairs, write_toy_split)

from lorascope.core import metrics
from lorascope.core.ablation import resolve_sweep
from lorascope.core.contracts import METRICS, SCORES, read_provenance, read_table
from lorascope.core.roles import roles_for

pytestmark = pytest.mark.usefixtures("one_thread")

MEASURES = ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
SWEEP = {"ablations": {"no_lora": {"drop": "all"},
                       "mlp_only": {"keep": {"component": "mlp"}},
                       "mha_only": {"keep": {"component": "attn"}}},
         "generate": "each_layer"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    base = build_base(root / "base", "llama", layers=2)
    adapter = build_adapter(base, root / "adapter")
    queries, candidates = write_toy_split(root / "split")
    ablations = resolve_sweep("components", SWEEP, num_layers=2,
                              arch_roles=roles_for("llama").roles)
    params = {
        "ablations": [a.to_params() for a in ablations],
        "metrics": MEASURES,
        "significance": {"test": "wilcoxon", "correction": "holm", "alpha": 0.05},
        "scoring": {"batch_tokens": 256, "max_length": 64},
        "model": "tiny", "adapter": "r4-all", "step": 10, "sweep": "components", "split": "toy",
    }
    return {"root": root, "base": base, "adapter": adapter, "split": root / "split",
            "params": params, "names": [a.name for a in ablations],
            "queries": queries, "candidates": candidates}


def outputs(root: Path, tag: str) -> tuple[Path, Path, Path]:
    return (root / tag / "scores.parquet", root / tag / "metrics.parquet",
            root / tag / "summary.json")


@pytest.fixture(scope="module")
def evaluated(setup) -> dict:
    from lorascope.evaluate import score_sweep

    scores, metrics_path, summary = outputs(setup["root"], "out")
    score_sweep(setup["params"], setup["base"], setup["adapter"], setup["split"], scores,
             metrics_path, summary, progress=False)
    return {"scores": read_table(scores, SCORES).to_pylist(),
            "metrics": read_table(metrics_path, METRICS).to_pylist(),
            "summary": json.loads(summary.read_text()), "scores_path": scores}


def test_scores_table(setup, evaluated) -> None:
    """One row per ablation and candidate; full equals an independent scoring, bitwise."""
    from lorascope.core.scoring import PreparedPairs

    rows = evaluated["scores"]
    names, candidates = setup["names"], setup["candidates"]
    assert names[:4] == ["full", "no_lora", "mlp_only", "mha_only"] and len(names) == 6
    assert len(rows) == len(names) * len(candidates)
    by_ablation: dict[str, dict] = {}
    for row in rows:
        by_ablation.setdefault(row["ablation"], {})[(row["qid"], row["docid"])] = row["score"]
    assert list(by_ablation) == names
    keys = {(q, d) for q, d, _ in candidates}
    assert all(set(s) == keys for s in by_ablation.values())

    model, tokenizer, arch = load_adapted(setup["base"], setup["adapter"])
    prepared = PreparedPairs.build(tokenizer, arch, setup["queries"], candidates,
                                   max_length=64, batch_tokens=256)
    assert by_ablation["full"] == prepared.score(model, progress=False)
    for name in names[1:]:
        diff = max(abs(by_ablation[name][k] - by_ablation["full"][k]) for k in keys)
        assert diff > 1e-3, name
    assert read_provenance(evaluated["scores_path"])["stage"] == "evaluate"


def test_metrics_table(setup, evaluated) -> None:
    rows = evaluated["metrics"]
    assert len(rows) == len(setup["names"]) * len(setup["queries"]) * len(MEASURES)
    from lorascope.core.contracts import QRELS
    from lorascope.data.splits import split_paths

    qrels = read_table(split_paths(setup["split"])["qrels"], QRELS)
    full_run = [(r["qid"], r["docid"], r["score"]) for r in evaluated["scores"]
                if r["ablation"] == "full"]
    expected = metrics.per_query(qrels, full_run, MEASURES)
    got = {m: {r["qid"]: r["value"] for r in rows
               if r["ablation"] == "full" and r["measure"] == m} for m in MEASURES}
    assert got == expected


def test_summary(setup, evaluated) -> None:
    summary = evaluated["summary"]
    assert {k: summary[k] for k in ("model", "adapter", "step", "sweep", "split")} == {
        "model": "tiny", "adapter": "r4-all", "step": 10, "sweep": "components", "split": "toy"}
    assert summary["reference"] == "full" and summary["measures"] == MEASURES
    assert summary["significance"]["correction"] == "holm"
    assert summary["ablation_order"] == setup["names"]
    assert set(summary["ablations"]) == set(setup["names"])
    full = summary["ablations"]["full"]
    assert full["p_value"] == dict.fromkeys(MEASURES)
    assert full["delta"] == dict.fromkeys(MEASURES, 0.0)
    assert full["zeroed_modules"] == 0 and full["queries"] == len(setup["queries"])
    no_lora = summary["ablations"]["no_lora"]
    assert no_lora["zeroed_modules"] == 2 * 7
    for m in MEASURES:
        raw, adj = no_lora["p_value"][m], no_lora["p_adjusted"][m]
        assert 0.0 <= raw <= adj <= 1.0
        assert no_lora["significant"][m] == (adj < 0.05)
        assert no_lora["delta"][m] == pytest.approx(no_lora["metrics"][m] - full["metrics"][m])
    for entry in summary["ablations"].values():
        assert 1.0 <= entry["padding_ratio"] <= 1.5
        assert entry["seconds"] > 0 and entry["pairs"] == len(setup["candidates"])
    assert summary["scoring"]["pairs"] == len(setup["candidates"])
    assert summary["provenance"]["stage"] == "evaluate"
    assert summary["provenance"]["params"] == setup["params"]


def test_run_files(setup, evaluated) -> None:
    """``runs/`` beside the scores holds one TREC run per ablation, tagged
    ``<model>.<adapter>.step-<step>.<sweep>.<ablation>``, with the scores exactly; trec_eval's
    measures on each file (a plain-Python trec_eval and pytrec_eval, both independent of
    lorascope's ir_measures) are the stage's per-query metrics and summary means, bitwise."""
    from statistics import fmean

    runs_dir = evaluated["scores_path"].with_name("runs")
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(f"{n}.run" for n in setup["names"])
    qrels = split_qrels(setup["split"])
    for name in setup["names"]:
        reported = {m: {r["qid"]: r["value"] for r in evaluated["metrics"]
                        if r["ablation"] == name and r["measure"] == m} for m in MEASURES}
        run = check_run_file(runs_dir / f"{name}.run",
                             f"tiny.r4-all.step-10.components.{name}", qrels, reported)
        scores = {(r["qid"], r["docid"]): r["score"] for r in evaluated["scores"]
                  if r["ablation"] == name}
        assert {(q, d): s for q, docs in run.items() for d, s in docs.items()} == scores
        means = {m: fmean(v.values()) for m, v in reference_trec_eval(qrels, run).items()}
        assert means == evaluated["summary"]["ablations"][name]["metrics"], name


def test_run_tag_fields_are_checked_before_scoring(setup, tmp_path) -> None:
    from lorascope.evaluate import score_sweep

    params = {k: v for k, v in setup["params"].items() if k != "adapter"}
    out = outputs(tmp_path, "x")
    with pytest.raises(ValueError, match=r"\['adapter'\] missing.*name the exported TREC runs"):
        score_sweep(params, setup["base"], setup["adapter"], setup["split"], *out,
                    progress=False)
    assert not (tmp_path / "x").exists()


def test_missing_module_fails_before_scoring(setup, tmp_path) -> None:
    from lorascope.evaluate import score_sweep
    from lorascope.core.switching import SwitchingError

    mlp_adapter = build_adapter(setup["base"], tmp_path / "mlp", targets="mlp")
    params = {**setup["params"], "ablations": [{"name": "no_attn", "zeroed": [[0, "q"]]}]}
    out = outputs(tmp_path, "x")
    with pytest.raises(SwitchingError, match="ablation 'no_attn'.*no LoRA on layer 0 q"):
        score_sweep(params, setup["base"], mlp_adapter, setup["split"], *out, progress=False)
    assert not any(p.exists() for p in out)


def test_reproduction_failure_is_an_error(setup, tmp_path, monkeypatch) -> None:
    """A switch that does not restore the adapter is caught by re-scoring full."""
    from lorascope.core import switching
    from lorascope.evaluate import ReproductionError, score_sweep

    @contextmanager
    def leaky(model, arch, modules):
        for key in modules:
            switching.lora_modules(model, arch)[key].enable_adapters(False)
        yield

    monkeypatch.setattr(switching, "zeroed", leaky)
    out = outputs(tmp_path, "x")
    with pytest.raises(ReproductionError, match="re-scoring 'full' after the sweep changed"):
        score_sweep(setup["params"], setup["base"], setup["adapter"], setup["split"], *out,
                 progress=False)
    assert not any(p.exists() for p in out)
    assert not (tmp_path / "x" / "runs").exists()  # runs are written after the check passes


def test_params_checks() -> None:
    from lorascope.core.results import EvalSettings

    base = {"ablations": [{"name": "x", "zeroed": [[0, "q"]]}], "metrics": ["nDCG@10"]}
    settings = EvalSettings.from_params(base)
    assert [a.name for a in settings.ablations] == ["full", "x"]  # reference added
    assert (settings.test, settings.correction, settings.alpha) == ("wilcoxon", "holm", 0.05)
    with pytest.raises(ValueError, match="significance.test must be one of"):
        EvalSettings.from_params({**base, "significance": {"test": "sign"}})
    with pytest.raises(ValueError, match="duplicate ablation names"):
        EvalSettings.from_params({**base, "ablations": base["ablations"] * 2})
    with pytest.raises(ValueError, match="'full' must zero and truncate nothing"):
        EvalSettings.from_params({**base, "ablations": [{"name": "full", "zeroed": [[0, "q"]]}]})
    with pytest.raises(ValueError, match="unknown keys"):
        EvalSettings.from_params({**base, "scoring": {"batch_size": 8}})


# --------------------------------------------------------------------------- svd sweeps


@pytest.fixture(scope="module")
def compressed(setup) -> dict:
    """An `svd` sweep (ranks 4, 2, 1 of a rank-4 adapter: 4 is skipped) through evaluate."""
    from lorascope.evaluate import score_sweep

    ablations = resolve_sweep("compression", {"generate": "svd", "ranks": [4, 2, 1]},
                              num_layers=2, arch_roles=roles_for("llama"), rank=4)
    params = {**setup["params"], "sweep": "compression",
              "ablations": [a.to_params() for a in ablations]}
    scores, metrics_path, summary = outputs(setup["root"], "svd")
    score_sweep(params, setup["base"], setup["adapter"], setup["split"], scores, metrics_path,
             summary, progress=False)
    by_ablation: dict[str, dict] = {}
    for row in read_table(scores, SCORES).to_pylist():
        by_ablation.setdefault(row["ablation"], {})[(row["qid"], row["docid"])] = row["score"]
    return {"params": params, "scores": by_ablation,
            "summary": json.loads(summary.read_text())}


def test_svd_sweep_scores_truncated_adapters(setup, compressed) -> None:
    """svd_r<k> equals scoring the adapter truncated in place independently, bitwise."""
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.switching import lora_modules, truncated

    scores = compressed["scores"]
    assert list(scores) == ["full", "svd_r2", "svd_r1"]
    model, tokenizer, arch = load_adapted(setup["base"], setup["adapter"])
    prepared = PreparedPairs.build(tokenizer, arch, setup["queries"], setup["candidates"],
                                   max_length=64, batch_tokens=256)
    assert scores["full"] == prepared.score(model, progress=False)
    for rank in (2, 1):
        with truncated(model, arch, set(lora_modules(model, arch)), rank):
            expected = prepared.score(model, progress=False)
        assert scores[f"svd_r{rank}"] == expected
        assert max(abs(expected[k] - scores["full"][k]) for k in expected) > 1e-3


def test_svd_sweep_summary(compressed) -> None:
    entries = compressed["summary"]["ablations"]
    assert entries["full"]["truncate_rank"] is None and entries["full"]["energy_kept"] is None
    assert entries["svd_r2"]["truncate_rank"] == 2 and entries["svd_r1"]["truncate_rank"] == 1
    assert 0 < entries["svd_r1"]["energy_kept"] < entries["svd_r2"]["energy_kept"] < 1
    for name in ("svd_r2", "svd_r1"):
        assert entries[name]["zeroed_modules"] == 0
        for m in MEASURES:
            assert 0.0 <= entries[name]["p_value"][m] <= entries[name]["p_adjusted"][m] <= 1.0


def test_svd_sweep_run_files(setup, compressed) -> None:
    runs_dir = setup["root"] / "svd" / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == ["full.run", "svd_r1.run", "svd_r2.run"]
    for name in ("full", "svd_r2", "svd_r1"):
        tags = {line.split()[5] for line in (runs_dir / f"{name}.run").read_text().splitlines()}
        assert tags == {f"tiny.r4-all.step-10.compression.{name}"}


def test_broken_truncation_restore_is_caught(setup, compressed, tmp_path, monkeypatch) -> None:
    """A truncation that leaves the factors truncated fails the reproduction check."""
    import torch

    from lorascope.core import switching
    from lorascope.core.lora_factors import truncate_factors
    from lorascope.evaluate import ReproductionError, score_sweep

    @contextmanager
    def leaky(model, arch, modules, rank):
        table = switching.lora_modules(model, arch)
        with torch.no_grad():
            for key in modules:
                layer = table[key]
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                a_k, b_k, _ = truncate_factors(a, b, rank)
                a.copy_(a_k)
                b.copy_(b_k)
        yield {key: 0.5 for key in modules}

    monkeypatch.setattr(switching, "truncated", leaky)
    out = outputs(tmp_path, "x")
    with pytest.raises(ReproductionError, match="re-scoring 'full' after the sweep changed"):
        score_sweep(compressed["params"], setup["base"], setup["adapter"], setup["split"], *out,
                 progress=False)
    assert not any(p.exists() for p in out)


def test_params_refuse_a_truncated_full() -> None:
    from lorascope.core.results import EvalSettings

    with pytest.raises(ValueError, match="'full' must zero and truncate nothing"):
        EvalSettings.from_params({"metrics": ["nDCG@10"], "ablations": [
            {"name": "full", "zeroed": [], "truncate_rank": 2}]})


# --------------------------------------------------------------------------- reproduction check


def test_reproduction_batches() -> None:
    from lorascope.evaluate import reproduction_batches

    plan = [[0, 1], [2, 3, 4], [5]]
    assert reproduction_batches(plan, 1) == 1
    assert reproduction_batches(plan, 3) == 2
    assert reproduction_batches(plan, 5) == 2
    assert reproduction_batches(plan, 6) == 3
    assert reproduction_batches(plan, 100) == 3


@pytest.fixture(scope="module")
def hundred(setup) -> dict:
    """100 pairs in small batches: more than the check's 64."""
    from lorascope.core.scoring import PreparedPairs

    model, tokenizer, arch = load_adapted(setup["base"], setup["adapter"])
    queries, candidates = toy_pairs(n_queries=10, per_query=10, seed=9)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                   batch_tokens=256)
    return {"model": model, "arch": arch, "prepared": prepared,
            "first": prepared.score(model, progress=False)}


def test_first_batches_are_bitwise_the_full_pass(hundred) -> None:
    prepared, first = hundred["prepared"], hundred["first"]
    assert len(prepared.batches) > 4
    subset = prepared.score(hundred["model"], progress=False, first_batches=3)
    indices = [i for batch in prepared.batches[:3] for i in batch]
    assert list(subset) == [prepared.keys[i] for i in sorted(indices)]
    assert subset == {k: first[k] for k in subset}
    assert prepared.last_stats.pairs == len(indices) and prepared.last_stats.batches == 3
    with pytest.raises(ValueError, match="batches or first_batches"):
        prepared.score(hundred["model"], progress=False, batches=[[0]], first_batches=1)


def test_reproduction_check_scores_the_first_64_pairs(hundred, caplog) -> None:
    import logging

    from lorascope.evaluate import REPRODUCTION_PAIRS, _check_reproduction

    prepared = hundred["prepared"]
    with caplog.at_level(logging.INFO, logger="lorascope.evaluate"):
        _check_reproduction(prepared, hundred["model"], "cpu", hundred["first"],
                            prepared.plan_version)
    checked = prepared.last_stats.pairs
    assert REPRODUCTION_PAIRS <= checked < len(prepared)
    assert f"bitwise after the sweep on {checked} of {len(prepared)} pairs" in caplog.text


def test_reproduction_check_catches_a_leaked_switch(hundred) -> None:
    """A module left switched off changes the checked scores: caught on the first batches."""
    from lorascope.evaluate import ReproductionError, _check_reproduction
    from lorascope.core.switching import lora_modules

    model, prepared = hundred["model"], hundred["prepared"]
    layer = lora_modules(model, hundred["arch"])[(1, "down")]
    layer.enable_adapters(False)
    try:
        with pytest.raises(ReproductionError, match=r"changed \d+ of the \d+ scores checked"):
            _check_reproduction(prepared, model, "cpu", hundred["first"],
                                prepared.plan_version)
    finally:
        layer.enable_adapters(True)
        for param in layer.parameters():
            param.requires_grad_(False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpoint_curve_equals_one_job_per_checkpoint(setup, tmp_path, precision) -> None:
    """evaluate_checkpoints (one load, checkpoints swapped in) writes, per step, bitwise the
    scores and the metrics that a separate evaluate job of the full adapter writes."""
    from lorascope.curves import evaluate_checkpoints, step_dir
    from lorascope.evaluate import score_sweep

    base = setup["base"]
    checkpoints = {5: build_adapter(base, tmp_path / "step-5", seed=5),
                   10: build_adapter(base, tmp_path / "step-10", seed=10)}
    scoring = {"batch_tokens": 256, "max_length": 64, "precision": precision}
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "steps": [5, 10],
              "metrics": MEASURES, "scoring": scoring}
    out = tmp_path / "curve"
    summary = evaluate_checkpoints(params, base, checkpoints, setup["split"], out,
                                   progress=False)
    assert summary["steps"] == [5, 10] and summary["precision"]["resolved"] == precision
    for step, adapter in checkpoints.items():
        alone = tmp_path / f"alone-{step}"
        alone.mkdir()
        single = {"ablations": [{"name": "full", "zeroed": []}], "metrics": MEASURES,
                  "scoring": scoring, "model": "tiny", "adapter": "r4-all", "step": step,
                  "sweep": "checkpoints", "split": "toy"}
        expected = score_sweep(single, base, adapter, setup["split"], alone / "scores.parquet",
                               alone / "metrics.parquet", alone / "summary.json", progress=False)
        got = json.loads((step_dir(out, step) / "summary.json").read_text())
        assert got["ablations"]["full"]["metrics"] == expected["ablations"]["full"]["metrics"]
        assert (got["step"], got["sweep"], got["scoring"]["precision"]) == (
            step, "checkpoints", precision)
        for table, contract in (("scores.parquet", SCORES), ("metrics.parquet", METRICS)):
            a = read_table(step_dir(out, step) / table, contract).to_pylist()
            b = read_table(alone / table, contract).to_pylist()
            assert a == b, (step, table)
        # the TREC run: the same file as the evaluate job's runs/full.run, same tag included
        run = (step_dir(out, step) / "full.run").read_bytes()
        assert run == (alone / "runs" / "full.run").read_bytes()
        assert {line.split()[5] for line in run.decode().splitlines()} == {
            f"tiny.r4-all.step-{step}.checkpoints.full"}
    with pytest.raises(ValueError, match=r"no checkpoint directory for steps \[20\]"):
        evaluate_checkpoints({**params, "steps": [5, 20]}, base, checkpoints, setup["split"],
                             tmp_path / "bad", progress=False)
