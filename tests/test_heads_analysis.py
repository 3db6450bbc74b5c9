"""The attention-head ablation analysis (lorascope.analyses.heads) on tiny LLaMA / GPT-NeoX /
BERT rerankers with random LoRA adapters on every role.

Pins: each head ablated through the stage's scoring loop (clean pass recorded, each ablation
resumed at its block) equals a fresh load with that head's columns of the output projection
zeroed; the model and its clean scores are bitwise restored after the loop; resumed scores are
bitwise those of full passes (zero and mean ablation); the streamed head means
(:class:`lorascope.core.heads.HeadMeans`) equal the mean of every recorded forward; the stage
reads the split before loading the model; the stage's tables match their contracts and
hold every step x layer x head, the base included, with sane significance columns; config and
params errors name the key; the report section renders from a small table.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import (
    as_tensor,
    assert_same_state,
    build_adapter,
    load_adapted,
    model_state,
    prepare,
    write_toy_split,
)
from test_config import BASE as STUDY_BASE
from test_heads import _zeroed_reference

from lorascope.analyses.heads import CLEAN, HEADS, HEADS_QUERIES
from lorascope.core import heads as core_heads
from lorascope.core.contracts import QRELS, read_provenance, read_table
from lorascope.data.splits import split_paths

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = ["llama", "gpt_neox", "bert"]
LAYERS, HEADS_PER_LAYER = 3, 4
MEASURES = ["nDCG@10", "RR(rel=2)"]


@pytest.fixture(scope="module")
def adapters(bases, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads-analysis")
    return {t: build_adapter(bases[t], root / t) for t in ARCHITECTURES}


def _loaded(bases, adapters, model_type):
    model, tokenizer, arch = load_adapted(bases[model_type], adapters[model_type])
    # several batches, so that the replay walks the recorded batches in order
    return model, arch, prepare(tokenizer, arch, batch_tokens=128)


# --------------------------------------------------------------------------- the scoring loop


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_each_ablation_equals_zeroed_output_columns_and_restores(bases, adapters, model_type):
    import torch

    from lorascope.analyses.heads.ablate import score_heads

    model, arch, prepared = _loaded(bases, adapters, model_type)
    assert len(prepared.batches) > 1
    before = model_state(model)
    scored = score_heads(prepared, model, arch, progress=False)
    every = [(layer, head) for layer in range(LAYERS) for head in range(HEADS_PER_LAYER)]
    assert list(scored.ablated) == every
    # resumed at its own block, except block 0 (nothing below it to replay)
    assert scored.resumed_at == {(layer, head): (layer or None) for layer, head in every}
    assert scored.cache_bytes and scored.cache_bytes > 0
    clean = as_tensor(scored.clean)
    for layer, head in every:
        reference = _zeroed_reference(bases[model_type], adapters[model_type], [(layer, head)])
        expected = as_tensor(prepared.score(reference, progress=False))
        got = as_tensor(scored.ablated[(layer, head)])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5,
                                   msg=f"layer {layer} head {head}")
        assert (got - clean).abs().max() > 1e-4  # the head mattered: the test could fail
    assert_same_state(before, model_state(model))
    assert prepared.score(model, progress=False) == scored.clean  # bitwise


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_resumed_scores_are_bitwise_full_passes(bases, adapters, model_type, mode):
    from lorascope.analyses.heads.ablate import score_heads

    model, arch, prepared = _loaded(bases, adapters, model_type)
    resumed = score_heads(prepared, model, arch, mode=mode, progress=False)
    full = score_heads(prepared, model, arch, mode=mode, resume=False, progress=False)
    assert full.cache_bytes is None and set(full.resumed_at.values()) == {None}
    assert sum(b is not None for b in resumed.resumed_at.values()) == (LAYERS - 1) * HEADS_PER_LAYER
    assert resumed.clean == full.clean
    for head, scores in full.ablated.items():
        assert resumed.ablated[head] == scores, head  # bitwise, every pair


def test_a_cache_over_budget_is_not_used(bases, adapters):
    from lorascope.analyses.heads.ablate import score_heads

    model, arch, prepared = _loaded(bases, adapters, "llama")
    scored = score_heads(prepared, model, arch, heads=[(2, 1)], cache_budget=1,
                         progress=False)
    assert scored.cache_bytes is None and scored.resumed_at == {(2, 1): None}


def test_streamed_means_equal_recorded_means(bases, adapters):
    import torch

    from lorascope.analyses.heads.ablate import score_heads
    from lorascope.core.heads import HeadMeans

    model, arch, prepared = _loaded(bases, adapters, "llama")
    masks = [prepared._collate(b)["attention_mask"] for b in prepared.batches]
    with core_heads.recorded_head_outputs(model, arch) as recorded:
        prepared.score(model, progress=False)
    # the reference: every recorded forward kept whole, averaged over its real tokens
    expected = {}
    for layer, outputs in recorded.items():
        assert len(outputs) == len(masks)
        rows = torch.cat([x[m.bool()].to(torch.float64) for x, m in zip(outputs, masks)])
        expected[layer] = rows.mean(0).to(torch.float32)
    with HeadMeans().recording(model, arch) as streamed:
        prepared.score(model, progress=False)
    means = streamed.means()
    assert set(means) == set(expected) == {0, 1, 2}
    for layer in means:
        torch.testing.assert_close(means[layer], expected[layer], rtol=0, atol=1e-6)
    # the loop's means are the clean pass's; mean ablation is not zero ablation
    scored = score_heads(prepared, model, arch, mode="mean", heads=[(1, 2)], progress=False)
    for layer in means:
        torch.testing.assert_close(scored.means[layer], means[layer], rtol=0, atol=1e-6)
    zeroed = score_heads(prepared, model, arch, heads=[(1, 2)], progress=False)
    assert scored.ablated[(1, 2)] != zeroed.ablated[(1, 2)]


def test_restoration_is_checked(bases, adapters, monkeypatch):
    from lorascope.analyses.heads import ablate

    model, _, prepared = _loaded(bases, adapters, "llama")
    clean = prepared.score(model, progress=False)
    broken = {k: v + 1.0 for k, v in clean.items()}
    with pytest.raises(ablate.RestorationError, match="changed .* scores"):
        ablate.check_restored(prepared, model, "cpu", broken, prepared.plan_version, "test")
    ablate.check_restored(prepared, model, "cpu", clean, prepared.plan_version, "test")


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def run(bases, tmp_path_factory) -> dict:
    """A two-checkpoint run of a 3-block LLaMA, a toy split, and the heads stage's outputs
    (step 5 ablated besides the base; step 10 is the last, whose head the base uses)."""
    from lorascope.analyses.heads.stage import heads

    root = tmp_path_factory.mktemp("heads-stage")
    base = bases["llama"]
    checkpoints = {5: build_adapter(base, root / "step-5", seed=5),
                   10: build_adapter(base, root / "step-10", seed=10)}
    queries, candidates = write_toy_split(root / "split", n_queries=6, per_query=8)
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "steps": [5, 10],
              "mode": "zero", "queries": 5, "depth": 6, "metrics": MEASURES,
              "significance": {"test": "ttest", "correction": "holm", "alpha": 0.05},
              "scoring": {"batch_tokens": 256, "max_length": 64}}
    out = {name: root / "out" / name
           for name in ("heads.parquet", "per_query.parquet", "summary.json")}
    summary = heads(params, base, checkpoints, root / "split", out["heads.parquet"],
                    out["summary.json"], out_per_query=out["per_query.parquet"],
                    progress=False)
    return {"base": base, "checkpoints": checkpoints, "split": root / "split", "out": out,
            "params": params, "summary": summary, "queries": queries, "candidates": candidates}


def test_stage_tables(run):
    steps = [0, 5, 10]
    rows = read_table(run["out"]["heads.parquet"], HEADS).to_pylist()
    assert len(rows) == len(steps) * LAYERS * HEADS_PER_LAYER * len(MEASURES)
    assert {(r["step"], r["layer"], r["head"], r["measure"]) for r in rows} == {
        (s, layer, head, m) for s in steps for layer in range(LAYERS)
        for head in range(HEADS_PER_LAYER) for m in MEASURES}
    assert {(r["model"], r["adapter"], r["split"], r["mode"]) for r in rows} == {
        ("tiny", "r4-all", "toy", "zero")}
    assert {r["queries"] for r in rows} == {5}  # the subset's first 5 judged queries
    for r in rows:
        assert r["drop"] == pytest.approx(r["clean"] - r["ablated"])
        assert 0 <= r["p_value"] <= r["p_adjusted"] <= 1
        assert r["significant"] == (r["p_adjusted"] < 0.05)
    for step in steps:  # one clean value per (step, measure)
        for m in MEASURES:
            assert len({r["clean"] for r in rows if (r["step"], r["measure"]) == (step, m)}) == 1
    assert any(r["drop"] != 0 for r in rows)  # something changed
    per_query = read_table(run["out"]["per_query.parquet"], HEADS_QUERIES).to_pylist()
    assert len(per_query) == (len(rows) + len(steps) * len(MEASURES)) * 5
    assert {(q["layer"], q["head"]) for q in per_query if q["step"] == 0} >= {(CLEAN, CLEAN)}
    for row in rows[:: max(1, len(rows) // 9)]:
        values = [q["value"] for q in per_query if (q["step"], q["layer"], q["head"],
                  q["measure"]) == (row["step"], row["layer"], row["head"], row["measure"])]
        assert row["ablated"] == pytest.approx(sum(values) / len(values))
        clean = [q["value"] for q in per_query if (q["step"], q["layer"], q["measure"]) ==
                 (row["step"], CLEAN, row["measure"])]
        assert row["clean"] == pytest.approx(sum(clean) / len(clean))
    assert read_provenance(run["out"]["heads.parquet"])["stage"] == "heads"


def test_stage_clean_values_are_each_models_evaluation(run):
    """The clean value of step s == checkpoint s loaded fresh and scored on the subset; step 0
    == every LoRA update off with the last checkpoint's head."""
    from lorascope.core import metrics
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.switching import lora_modules, zeroed
    from lorascope.data.splits import read_split, subset

    queries, candidates, qrels = read_split(run["split"])
    candidates = subset(candidates, qrels, queries=5, depth=6)
    kept = {q for q, _, _ in candidates}
    qrels = read_table(split_paths(run["split"])["qrels"], QRELS)
    qrels = qrels.filter([q in kept for q in qrels.column("qid").to_pylist()])
    rows = read_table(run["out"]["heads.parquet"], HEADS).to_pylist()
    for step, adapter in [(5, run["checkpoints"][5]), (10, run["checkpoints"][10]),
                          (0, run["checkpoints"][10])]:
        model, tokenizer, arch = load_adapted(run["base"], adapter)
        prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                       batch_tokens=256)
        with zeroed(model, arch, lora_modules(model, arch)) if step == 0 else nullcontext():
            scores = prepared.score(model, progress=False)
        expected = metrics.aggregate(metrics.per_query(
            qrels, [(q, d, s) for (q, d), s in scores.items()], MEASURES))
        for m in MEASURES:
            got = next(r["clean"] for r in rows if (r["step"], r["measure"]) == (step, m))
            assert got == pytest.approx(expected[m]), (step, m)


def test_stage_summary(run):
    summary = json.loads(run["out"]["summary.json"].read_text())
    assert summary == json.loads(json.dumps(run["summary"]))
    assert summary["steps"] == [0, 5, 10] and summary["mode"] == "zero"
    assert summary["layout"] == {"layers": 3, "heads": 4, "head_dim": 8, "architecture": "llama"}
    assert summary["base"] == {"step": 0, "lora": "every LoRA update switched off",
                               "head_from_step": 10, "original_base": True}
    assert summary["subset"] == {"queries": 5, "depth": 6, "judged_queries": 5, "pairs": 30}
    rows = read_table(run["out"]["heads.parquet"], HEADS).to_pylist()
    for entry in summary["per_step"]:
        assert entry["ablations"] == 12 and entry["resumed"] == 8 and entry["restored"]
        assert entry["ablation_seconds"] > 0
        mine = [r for r in rows if r["step"] == entry["step"] and r["measure"] == MEASURES[0]]
        top = max(mine, key=lambda r: r["drop"])
        assert entry["top_heads"][0]["drop"] == pytest.approx(top["drop"], abs=1e-6)
        assert len(entry["top_heads"]) == 10
        assert entry["significant_heads"][MEASURES[0]] == [
            [r["layer"], r["head"]] for r in mine if r["significant"]]
    made = summary["lora_made_matter"]
    assert set(made) == {"5", "10"}
    first = made["10"][0]
    assert first["difference"] == pytest.approx(first["drop"] - first["base_drop"], abs=1e-6)
    assert summary["provenance"]["params"] == run["params"]
    assert summary["provenance"]["base_head_step"] == 10
    assert summary["scoring"]["precision"]


def test_stage_base_uses_the_last_head_when_only_earlier_steps_are_ablated(run, tmp_path):
    from lorascope.analyses.heads.stage import heads

    params = {**run["params"], "steps": [5], "metrics": ["nDCG@10"], "queries": 3}
    out = (tmp_path / "heads.parquet", tmp_path / "summary.json")
    summary = heads(params, run["base"], run["checkpoints"], run["split"], *out,
                    progress=False)
    assert summary["steps"] == [0, 5] and summary["base"]["head_from_step"] == 10
    first = read_table(run["out"]["heads.parquet"], HEADS).to_pylist()
    again = read_table(out[0], HEADS).to_pylist()
    # same base model (LoRA off, step-10 head), fewer queries: other means, same heads
    assert {(r["step"], r["layer"], r["head"]) for r in again} == {
        (r["step"], r["layer"], r["head"]) for r in first if r["step"] in (0, 5)}


def test_stage_refuses_bad_input(run, tmp_path):
    from lorascope.analyses.heads.stage import heads

    out = (tmp_path / "heads.parquet", tmp_path / "summary.json")
    args = (run["params"], run["base"])
    with pytest.raises(ValueError, match="'steps' names \\[10\\] but no checkpoint directory"):
        heads(*args, {5: run["checkpoints"][5]}, run["split"], *out, progress=False)
    with pytest.raises(ValueError, match="step 0 is the base model"):
        heads(*args, {0: run["checkpoints"][5]}, run["split"], *out, progress=False)
    with pytest.raises(FileNotFoundError, match="no peft adapter directory"):
        heads(*args, {5: tmp_path / "missing"}, run["split"], *out, progress=False)
    mlp = build_adapter(run["base"], tmp_path / "mlp", targets="mlp")
    with pytest.raises(ValueError, match="different adapter configs.*target_modules"):
        heads(*args, {5: run["checkpoints"][5], 10: mlp}, run["split"], *out, progress=False)
    assert not any(p.exists() for p in out)


def test_stage_reads_the_split_before_loading_the_model(run, tmp_path, monkeypatch):
    """Bad input (a missing split, a step with no checkpoint) fails before any loading."""
    from lorascope.analyses.heads import stage
    from lorascope.core.contracts import ContractError

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stage, "load_run", no_loading)
    out = (tmp_path / "heads.parquet", tmp_path / "summary.json")
    with pytest.raises(ContractError, match="no such queries file"):
        stage.heads(run["params"], run["base"], run["checkpoints"], tmp_path / "no-split",
                    *out, progress=False)
    with pytest.raises(ValueError, match=r"'steps' names \[7\]"):
        stage.heads({**run["params"], "steps": [7]}, run["base"], run["checkpoints"],
                    run["split"], *out, progress=False)
    assert not any(p.exists() for p in out)


@pytest.mark.parametrize(("change", "message"), [
    ({"metrics": []}, "'metrics' must be a non-empty list"),
    ({"metrics": ["nDCG@10", "nDCG@10"]}, "'metrics' lists a measure twice"),
    ({"steps": [0]}, "'steps' must be a list of distinct checkpoint steps"),
    ({"steps": [5, 5]}, "'steps' must be a list of distinct checkpoint steps"),
    ({"mode": "resample"}, "'mode' must be one of zero, mean, got 'resample'"),
    ({"queries": 0}, "'queries' must be a positive int or null"),
    ({"depth": True}, "'depth' must be a positive int or null"),
    ({"significance": {"tests": "t"}}, r"unknown keys \['significance.tests'\]"),
    ({"significance": {"test": "sign"}}, "significance.test must be one of"),
    ({"significance": {"correction": "bh"}}, "significance.correction must be one of"),
    ({"significance": {"alpha": 1.5}}, r"significance.alpha must be in \(0, 1\)"),
    ({"scoring": {"batch_size": 8}}, r"unknown keys \['scoring.batch_size'\]"),
    ({"step": 5}, r"unknown keys \['step'\]"),
])
def test_params_errors_name_the_key(change, message):
    from lorascope.analyses.heads.stage import HeadsSettings

    params = {"metrics": ["nDCG@10"], "steps": [5], **change}
    with pytest.raises(ValueError, match=message):
        HeadsSettings.from_params(params)


# --------------------------------------------------------------------------- the study side


def _study(heads_block):
    from lorascope.study.parse import load_study

    raw = copy.deepcopy(STUDY_BASE)
    raw["analyses"] = {"heads": heads_block}
    return load_study(raw)


def test_config_defaults_slice_and_jobs():
    from lorascope.analyses.heads import study as heads_study
    from lorascope.study import slices

    study = _study({})
    spec = study.analysis("heads")
    assert (spec.steps, spec.mode, spec.splits, spec.queries, spec.depth) == (
        None, "zero", ("validation",), None, None)
    assert heads_study.jobs(study) == [
        {"model": "tiny", "adapter": a, "split": "validation"} for a in ("r1-all", "r8-all")]
    cfg = slices.for_rule("heads")(study, model="tiny", adapter="r8-all", split="validation")
    assert cfg["steps"] == [10] and cfg["mode"] == "zero"  # the last checkpoint
    assert cfg["significance"] == {"test": "wilcoxon", "correction": "holm", "alpha": 0.05}
    assert set(cfg) == {"model", "adapter", "split", "steps", "mode", "queries", "depth",
                        "metrics", "significance", "scoring"}
    study = _study({"adapters": ["r8-all"], "steps": [5], "mode": "mean", "splits": ["dl19"],
                    "queries": 10, "depth": 20})
    cfg = slices.for_rule("heads")(study, model="tiny", adapter="r8-all", split="dl19")
    assert (cfg["steps"], cfg["mode"], cfg["queries"], cfg["depth"]) == ([5], "mean", 10, 20)
    assert heads_study.checkpoints(study, "tiny", "r8-all") == [5, 10]  # + the last's head
    assert heads_study.jobs(study) == [{"model": "tiny", "adapter": "r8-all", "split": "dl19"}]
    study = _study({"steps": ["last", 5]})
    assert heads_study.steps(study, "tiny", "r8-all") == [5, 10]
    assert slices.report(study)["heads"] == {"measure": "nDCG@10"}
    assert _study({}).analysis("lens") is None


@pytest.mark.parametrize(("block", "message"), [
    ({"steps": [7]}, ("config key 'analyses.heads.steps[0]': adapter 'r1-all' of model 'tiny' "
                      "has no checkpoint at step 7 (its checkpoints: 5, 10)")),
    ({"steps": [5, 11]}, "config key 'analyses.heads.steps[1]': adapter 'r1-all' of model 'tiny' has no checkpoint at step 11"),
    ({"steps": []}, "config key 'analyses.heads.steps'"),
    ({"steps": ["first"]}, "config key 'analyses.heads.steps[0]'"),
    ({"mode": "resample"}, "config key 'analyses.heads.mode': 'resample' is not one of"),
    ({"queries": 0}, "config key 'analyses.heads.queries'"),
    ({"depth": "all"}, "config key 'analyses.heads.depth'"),
    ({"splits": ["dl20"]}, "config key 'analyses.heads.splits[0]': unknown split 'dl20'"),
    ({"models": ["big"]}, "config key 'analyses.heads.models[0]': unknown model 'big'"),
    ({"adapters": ["r16-all"]}, "config key 'analyses.heads.adapters[0]': no model trains"),
    ({"layers": [1]}, "config key 'analyses.heads': unknown key 'layers'"),
])
def test_config_errors_name_the_key(block, message):
    from lorascope.study.spec import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        _study(block)


# --------------------------------------------------------------------------- the report


def _heads_rows(model, layers, heads, steps, *, offset=0.0):
    rows = []
    for step in steps:
        for layer in range(layers):
            for head in range(heads):
                drop = (0.01 * (layer + 1) * (head + 1) + (0.2 if (step and (layer, head) ==
                                                                   (1, 2)) else 0.0)) + offset
                for m in ("nDCG@10", "RR(rel=2)"):
                    rows.append({"model": model, "adapter": "r8-all", "split": "dl19",
                                 "mode": "zero", "step": step, "layer": layer, "head": head,
                                 "measure": m, "clean": 0.6, "ablated": 0.6 - drop,
                                 "drop": drop, "p_value": 0.001 if drop > 0.1 else 0.5,
                                 "p_adjusted": 0.01 if drop > 0.1 else 0.9,
                                 "significant": drop > 0.1, "queries": 8})
    return rows


def test_report_section_renders(tmp_path):
    from test_report import build_summary, make_params, md_table

    from lorascope.core import contracts
    from lorascope.report import render_report

    summary = build_summary(tmp_path / "summary")
    rows = _heads_rows("alpha", 4, 3, [0, 100]) + _heads_rows("tiny", 3, 2, [0, 100])
    contracts.write_table(summary / "heads.parquet", {k: [r[k] for r in rows]
                                                      for k in HEADS.columns}, HEADS)
    study = json.loads((summary / "study.json").read_text())
    study.setdefault("analyses", {})["heads"] = {"adapters": ["r8-all"]}
    (summary / "study.json").write_text(json.dumps(study))
    out = tmp_path / "out"
    result = render_report(make_params(heads={"measure": "nDCG@10", "top": 3}), summary, out)
    assert "heads" in result["figures"] and (out / "figures" / "heads.png").is_file()
    md = (out / "report.md").read_text()
    header, body = md_table(md, "Attention heads that matter most")
    assert header == ["Rank", "Alpha_7B #1 base: head", "base: drop", "100: head", "100: drop",
                      "Tiny-NeoX 50%‡ base: head", "base: drop", "100: head", "100: drop"]
    # alpha: base L3 H2 (0.01*4*3 = 0.12, significant), step 100 L1 H2 (0.06 + 0.2); tiny
    # (3 x 2 heads, no (1, 2) boost): L2 H1 (0.06) at both
    assert body["1"] == ["L3 H2", "+0.1200†", "L1 H2", "+0.2600†", "L2 H1", "+0.0600",
                         "L2 H1", "+0.0600"]
    assert len(body) == 3
    assert "Heads LoRA made matter most" in md and "L1 H2 (+0.200: +0.260 at step 100 (significant), +0.060 at the base)" in md
    assert result["omitted"].get("heads") is None
    import pandas as pd

    csv = pd.read_csv(out / "tables" / "table-heads.csv")
    cell = csv[(csv["row"] == 1) & (csv["column"] == "100: drop")
               & (csv["model"] == "alpha")].iloc[0]
    assert cell["value"] == pytest.approx(0.26) and bool(cell["significant"])
    assert cell["p_adjusted"] == pytest.approx(0.01) and cell["text"] == "+0.2600†"


def test_report_section_without_table(tmp_path):
    from test_report import build_summary, make_params

    from lorascope.report import render_report

    summary = build_summary(tmp_path / "summary")
    result = render_report(make_params(), summary, tmp_path / "out")
    assert result["omitted"]["heads"].startswith("Attention-head ablation not produced")
