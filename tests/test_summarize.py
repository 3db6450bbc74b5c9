"""The summarize stage: evaluation, boundary, lens and anatomy outputs gathered into the
summary tables the report reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.boundary import BOUNDARY
from lorascope.analyses.lens import LENS
from lorascope.analyses.boundary import PRUNED_SWEEP as BOUNDARY_SWEEP
from lorascope.core import contracts
from lorascope.core.contrasts import CONTRASTS
from lorascope.summarize import summarize

RUN = {"model": "m", "adapter": "r8-all-dora", "rank": 8, "targets": "all", "variant": "dora",
       "step": 60}


def _entry(value: float, delta: float, p: float | None, **extra) -> dict:
    return {"metrics": {"nDCG@10": value}, "delta": {"nDCG@10": delta},
            "p_value": {"nDCG@10": p}, "p_adjusted": {"nDCG@10": p},
            "significant": {"nDCG@10": p is not None and p < 0.05}, "queries": 43, **extra}


def _write(path: Path, value: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return str(path)


def _inputs(tmp_path: Path) -> dict:
    first = _write(tmp_path / "fs" / "dl19" / "summary.json",
                   {"metrics": {"nDCG@10": 0.5058}, "queries": 43})
    curve = [
        {**RUN, "step": step, "sweep": "checkpoints", "split": "validation",
         "summary": _write(tmp_path / f"ev{step}.json",
                           {"ablations": {"full": _entry(v, 0.0, None)}})}
        for step, v in ((15, 0.40), (30, 0.47), (60, 0.475))
    ]
    compare = {
        "ablations": {
            "full": _entry(0.48, 0.0, None, lora_params=1000, pairs_per_second=40.0),
            "pruned": _entry(0.47, -0.01, 0.3, lora_params=250, pairs_per_second=50.0),
        },
        "boundary": {
            "b": 1, "layers": 6, "params_removed_fraction": 0.75, "speedup": 1.25,
            "selection": {"measure": "nDCG@10", "value": 0.5,
                          "sources": ["results/s/eval/m/r8-all-dora/step-60/boundary/"
                                      "validation/summary.json"]},
        },
    }
    boundary = [{**RUN, "sweep": "", "split": "dl19",
                 "summary": _write(tmp_path / "cmp.json", compare)}]
    lens = tmp_path / "lens.parquet"
    contracts.write_rows(lens, LENS, [
        {"model": "m", "adapter": "r8-all-dora", "split": "validation", "step": s, "layer": layer,
         "measure": "nDCG@10", "value": 0.1 * layer, "queries": 12}
        for s in (0, 60) for layer in (1, 2)])
    anatomy = tmp_path / "anatomy.parquet"
    contracts.write_rows(anatomy, ANATOMY, [
        {"model": "m", "adapter": "r8-all-dora", "step": 60, "layer": 0, "role": "q",
         "module": "q", "rank": 8, "d_in": 4, "d_out": 4, "scaling": 8.0, "params": 64,
         "fro": 1.0, "spectral": 0.9, "effective_rank": 2.0, "stable_rank": 1.2,
         "sigma": [0.9, 0.1], "magnitude_norm": None, "magnitude_shift": None}])
    train = tmp_path / "train_log.csv"
    train.write_text("step,loss,lr\n1,2.0,0.001\n")
    analyses = {"boundary": boundary, "lens": [{"lens": str(lens)}],
                "anatomy": [{"anatomy": str(anatomy)}]}
    return {"evaluations": curve, "analyses": analyses, "first_stage": {"dl19": first},
            "training": [{"model": "m", "adapter": "r8-all-dora", "log": str(train)}],
            "benchmarks": str(tmp_path / "bench"), "models": {"m": str(tmp_path / "base")}}


def _params() -> dict:
    return {"convergence": {"split": "validation", "measure": "nDCG@10", "epsilon": 0.01},
            "study": {"study": "s", "models": {"m": {"label": "M", "mechanics_only": False}},
                      "splits": {}, "adapters": {}, "analyses": {}}}


def test_summary_gathers_every_analysis(tmp_path):
    out = tmp_path / "summary"
    summarize(_params(), _inputs(tmp_path), out)

    ev = contracts.read_table(out / "evaluations.parquet", contracts.EVALUATIONS).to_pandas()
    assert set(ev[ev["model"] == "m"]["variant"]) == {"dora"}
    pruned = ev[(ev["sweep"] == BOUNDARY_SWEEP) & (ev["ablation"] == "pruned")].iloc[0]
    assert (pruned["split"], pruned["value"], pruned["delta"]) == ("dl19", 0.47, -0.01)
    assert pruned["p_adjusted"] == 0.3 and not pruned["significant"]

    (row,) = contracts.read_table(out / "boundary.parquet", BOUNDARY).to_pylist()
    assert row["b"] == 1 and row["num_layers"] == 6 and row["selection_split"] == "validation"
    assert (row["lora_params_full"], row["lora_params_pruned"]) == (1000, 250)
    assert (row["pairs_per_second_full"], row["pairs_per_second_pruned"]) == (40.0, 50.0)
    assert row["speedup"] == 1.25 and row["params_removed_fraction"] == 0.75

    lens = contracts.read_table(out / "lens.parquet", LENS).to_pandas()
    assert len(lens) == 4 and set(lens["step"]) == {0, 60}
    anatomy = contracts.read_table(out / "anatomy.parquet", ANATOMY).to_pylist()
    assert anatomy[0]["sigma"] == [0.9, 0.1]

    conv = pd.read_parquet(out / "convergence.parquet")
    assert conv.loc[0, "convergence_step"] == 30  # 0.47 is within 0.01 of the best 0.475
    study = json.loads((out / "study.json").read_text())
    assert set(study["inputs"]) == {"evaluations", "convergence", "training_log", "contrasts",
                                    "boundary",
                                    "lens", "patching", "patching_heads", "probing", "heads",
                                    "anatomy"}


def test_a_study_without_analyses_gets_empty_tables(tmp_path):
    inputs = {**_inputs(tmp_path), "analyses": {}}
    out = tmp_path / "summary"
    summarize(_params(), inputs, out)
    from lorascope.analyses.registry import ANALYSES

    tables = {name: c for a in ANALYSES for name, c in a.tables.items()}
    assert {"boundary", "lens", "anatomy", "patching", "probing", "heads"} <= set(tables)
    for name, contract in tables.items():
        assert contracts.read_table(out / f"{name}.parquet", contract).num_rows == 0


def test_contrasts_test_pairs_of_ablations_per_query(tmp_path):
    """A sweep with ``compare`` gets each pair tested per query on every measure (Holm over
    the pairs), the same numbers as scipy's signed-rank test on the per-query differences."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(12)]
    values = {"full": rng.uniform(0.4, 0.8, 12)}
    values["mha_only"] = values["full"] - rng.uniform(0.0, 0.1, 12)
    values["mlp_only"] = values["mha_only"] - rng.uniform(0.05, 0.2, 12)
    values["no_lora"] = values["mlp_only"] + rng.normal(0.0, 0.01, 12)
    metrics = tmp_path / "metrics.parquet"
    contracts.write_rows(metrics, contracts.METRICS, [
        {"ablation": a, "qid": q, "measure": m, "value": float(v[i] * (1 if m == "nDCG@10" else 0.5))}
        for a, v in values.items() for i, q in enumerate(qids) for m in ("nDCG@10", "RR(rel=2)")])
    entries = {a: _entry(float(v.mean()), 0.0, None) for a, v in values.items()}
    job = {**RUN, "sweep": "components", "split": "dl19", "metrics": str(metrics),
           "summary": _write(tmp_path / "comp.json", {"ablations": entries})}
    inputs = {**_inputs(tmp_path), "evaluations": [job]}
    params = {**_params(), "contrasts": {"components": [["mha_only", "mlp_only"],
                                                         ["mlp_only", "no_lora"]]},
              "significance": {"test": "wilcoxon", "correction": "holm", "alpha": 0.05}}
    out = tmp_path / "summary"
    summarize(params, inputs, out)

    ct = contracts.read_table(out / "contrasts.parquet", CONTRASTS).to_pandas()
    assert len(ct) == 4 and set(ct["measure"]) == {"nDCG@10", "RR(rel=2)"}
    nd = ct[ct["measure"] == "nDCG@10"].set_index("a")
    first, second = nd.loc["mha_only"], nd.loc["mlp_only"]
    assert (first["b"], second["b"]) == ("mlp_only", "no_lora")
    assert first["delta"] == pytest.approx(
        float((values["mha_only"] - values["mlp_only"]).mean()))
    p1 = scipy_stats.wilcoxon(values["mlp_only"] - values["mha_only"]).pvalue
    p2 = scipy_stats.wilcoxon(values["no_lora"] - values["mlp_only"]).pvalue
    assert first["p_value"] == pytest.approx(p1)
    assert second["p_value"] == pytest.approx(p2)
    low, high = sorted([p1, p2])  # Holm over the two pairs
    want = {p1: min(1.0, 2 * low) if p1 == low else max(min(1.0, 2 * low), high),
            p2: min(1.0, 2 * low) if p2 == low else max(min(1.0, 2 * low), high)}
    assert first["p_adjusted"] == pytest.approx(want[p1])
    assert second["p_adjusted"] == pytest.approx(want[p2])
    assert bool(first["significant"]) and first["queries"] == 12
    assert bool(second["significant"]) == (want[p2] < 0.05)
