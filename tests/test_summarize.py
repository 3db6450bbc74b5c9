"""The summarize stage: evaluation, boundary, lens and anatomy outputs gathered into the
summary tables the report reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.boundary import BOUNDARY
from lorascope.analyses.lens import LENS
from lorascope.analyses.boundary import PRUNED_SWEEP as BOUNDARY_SWEEP
from lorascope.core import contracts
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
    assert set(study["inputs"]) == {"evaluations", "convergence", "training_log", "boundary",
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
