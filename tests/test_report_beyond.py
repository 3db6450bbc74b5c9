"""The "beyond the paper" sections of the report on a synthetic summary built here: boundary
pruning, relevance lens, LoRA update anatomy, post-hoc rank compression and LoRA variants.
Cells are checked against values computed by hand from the synthetic inputs; a missing input
gives a one-line note; the whole report still renders as Markdown, LaTeX and HTML."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_report import (
    ATTN,
    MEASURES,
    MLP,
    MODELS,
    _row,
    build_summary,
    check_latex,
    ckpt_value,
    make_params,
    md_table,
    sweep_full,
)

from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.boundary import BOUNDARY
from lorascope.analyses.lens import LENS as LENS_TABLE
from lorascope.core import contracts
from lorascope.report import render_report
from lorascope.analyses.lens.readable import readable_from

# ---------------------------------------------------------------- synthetic beyond inputs

# boundary analysis of alpha r8-all (4 layers): the stage chose b = 2 (the rule on the
# synthetic boundary sweep would give 1: the report must mark the analysis' own choice)
BOUNDARY_B = 2
REMOVED = 0.25
SPEEDUP = {"dl19": 1.3125, "dl20": 1.25}
PRUNED_DELTA = {"dl19": -0.02, "dl20": 0.004}
PRUNED_SIG = {"dl19": True, "dl20": False}
PRUNED_P_ADJ = {"dl19": 0.0123, "dl20": 0.61}

# relevance lens of alpha r8-all on validation (layers 1..4) and tiny r8-all (layers 1..3)
LENS = {
    ("alpha", 0): [0.30, 0.33, 0.36, 0.37],   # readable from 3 (0.36 >= 0.37 - 0.01)
    ("alpha", 50): [0.35, 0.45, 0.52, 0.50],  # from 3 (0.52 >= 0.49); 0.45 < 0.49
    ("alpha", 100): [0.40, 0.575, 0.59, 0.58],  # from 2 (0.575 >= 0.57)
    ("tiny", 0): [0.2, 0.2, 0.2],             # from 1
    ("tiny", 100): [0.1, 0.31, 0.5],          # from 3
}

# compression of alpha r8-all on dl19 at step 100
SVD = {4: (-0.004, False), 2: (-0.03, True), 1: (-0.09, True)}

# a DoRA variant of alpha r8-all, with its own checkpoints, convergence and components sweep
DORA = "r8-all-dora"
DORA_OFFSET = 0.011
DORA_COMPONENTS = {"no_lora": (-0.25, True), "mlp_only": (-0.1, False), "mha_only": (-0.04, False)}


def fro_value(model: str, adapter: str, step: int, layer: int, j: int) -> float:
    """A deterministic, tie-free ‖ΔW‖_F (grows with the layer, with a role pattern)."""
    rank = 8 if adapter.startswith("r8") else 1
    return round((1 + layer) * (1.0 + 0.37 * ((3 * j + layer) % 5)) * step / 100
                 * (1.0 if rank == 8 else 0.5) + 0.001 * j, 6)


def sigma_values(rank: int, layer: int, j: int) -> list[float]:
    return [1.0 / (1 + i * (1 + 0.5 * ((layer + j) % 3))) for i in range(rank)]


def effective_rank(sigma: list[float]) -> float:
    p = np.asarray(sigma) / np.sum(sigma)
    return float(np.exp(-np.sum(p * np.log(p))))


def _append_evaluations(root: Path, rows: list[dict]) -> None:
    table = contracts.read_table(root / "evaluations.parquet", contracts.EVALUATIONS)
    extra = pa.Table.from_pylist(rows, schema=contracts.EVALUATIONS.schema)
    contracts.write_table(root / "evaluations.parquet", pa.concat_tables([table, extra]),
                          contracts.EVALUATIONS)


def _write(path: Path, contract: contracts.Contract, rows: list[dict]) -> None:
    contracts.write_table(path, {k: [r[k] for r in rows] for k in contract.columns}, contract)


def build_beyond_summary(root: Path, *, parts=("boundary", "lens", "anatomy", "compression",
                                                "variants")) -> Path:
    """The synthetic summary of test_report plus the inputs of the beyond sections."""
    build_summary(root)
    study = json.loads((root / "study.json").read_text())
    rows: list[dict] = []
    adapters = {m: {"r1-all": {"rank": 1, "targets": "all", "variant": ""},
                    "r8-all": {"rank": 8, "targets": "all", "variant": ""},
                    "r8-mlp": {"rank": 8, "targets": "mlp", "variant": ""}} for m in MODELS}
    if "boundary" in parts:
        brows = []
        for split in ("dl19", "dl20"):
            for measure in MEASURES:
                full = sweep_full("alpha", "r8-all", split, measure, MODELS)
                delta = PRUNED_DELTA[split] if measure == "nDCG@10" else 0.0
                common = dict(model="alpha", adapter="r8-all", rank=8, targets="all", step=100,
                              sweep="boundary_pruned", split=split, measure=measure)
                rows.append(_row(**common, ablation="full", value=full, delta=0.0,
                                 p_value=1.0, p_adjusted=1.0))
                sig = PRUNED_SIG[split] and measure == "nDCG@10"
                rows.append(_row(**common, ablation="pruned", value=round(full + delta, 6),
                                 delta=delta, p_value=0.003, significant=sig,
                                 p_adjusted=PRUNED_P_ADJ[split] if measure == "nDCG@10"
                                 else 0.9))
            brows.append({
                "model": "alpha", "adapter": "r8-all", "step": 100, "split": split,
                "selection_split": "validation", "measure": "nDCG@10", "selection_value": 0.6,
                "b": BOUNDARY_B, "num_layers": 4, "params_removed_fraction": REMOVED,
                "lora_params_full": 4000, "lora_params_pruned": 3000,
                "pairs_per_second_full": 800.0, "pairs_per_second_pruned": 800.0 * SPEEDUP[split],
                "speedup": SPEEDUP[split]})
        _write(root / "boundary.parquet", BOUNDARY, brows)
    if "lens" in parts:
        lrows = []
        for (model, step), values in LENS.items():
            for layer, value in enumerate(values, start=1):
                for measure in MEASURES:
                    lrows.append({"model": model, "adapter": "r8-all", "split": "validation",
                                  "step": step, "layer": layer, "measure": measure,
                                  "value": value if measure == "nDCG@10" else value / 2,
                                  "queries": 8})
        _write(root / "lens.parquet", LENS_TABLE, lrows)
    if "anatomy" in parts:
        arows = []
        for model, info in MODELS.items():
            roles = ATTN[info["arch"]] + MLP[info["arch"]]
            for adapter, rank in (("r1-all", 1), ("r8-all", 8)):
                for step in (50, 100):
                    for layer in range(info["layers"]):
                        for j, role in enumerate(roles):
                            sigma = sigma_values(rank, layer, j)
                            arows.append({
                                "model": model, "adapter": adapter, "step": step,
                                "layer": layer, "role": role, "module": f"layers.{layer}.{role}",
                                "rank": rank, "d_in": 64, "d_out": 64, "scaling": 2.0,
                                "params": rank * 128,
                                "fro": fro_value(model, adapter, step, layer, j),
                                "spectral": 1.0, "effective_rank": effective_rank(sigma),
                                "stable_rank": 1.0, "sigma": sigma, "magnitude_norm": None,
                                "magnitude_shift": None})
        _write(root / "anatomy.parquet", ANATOMY, arows)
    if "compression" in parts:
        for measure in MEASURES:
            full = sweep_full("alpha", "r8-all", "dl19", measure, MODELS)
            common = dict(model="alpha", adapter="r8-all", rank=8, targets="all", step=100,
                          sweep="compression", split="dl19", measure=measure)
            rows.append(_row(**common, ablation="full", value=full, delta=0.0, p_value=1.0,
                             p_adjusted=1.0))
            for k, (delta, sig) in SVD.items():
                rows.append(_row(**common, ablation=f"svd_r{k}", value=round(full + delta, 6),
                                 delta=delta, p_value=0.01 if sig else 0.5,
                                 p_adjusted=0.02 if sig else 0.7, significant=sig))
    if "variants" in parts:
        adapters["alpha"][DORA] = {"rank": 8, "targets": "all", "variant": "dora"}
        common = dict(model="alpha", adapter=DORA, rank=8, targets="all", variant="dora")
        for step in (5, 10, 50, 100):
            for split in ("validation", "dl19", "dl20"):
                for measure in MEASURES:
                    v = ckpt_value("alpha", "r8-all", step, split, measure, MODELS) + DORA_OFFSET
                    rows.append(_row(**common, step=step, sweep="checkpoints", split=split,
                                     ablation="full", measure=measure, value=round(v, 6),
                                     delta=0.0, p_value=1.0, p_adjusted=1.0))
        for measure in MEASURES:
            full = sweep_full("alpha", "r8-all", "dl19", measure, MODELS) + DORA_OFFSET
            rows.append(_row(**common, step=100, sweep="components", split="dl19",
                             ablation="full", measure=measure, value=round(full, 6), delta=0.0,
                             p_value=1.0, p_adjusted=1.0))
            for name, (delta, sig) in DORA_COMPONENTS.items():
                rows.append(_row(**common, step=100, sweep="components", split="dl19",
                                 ablation=name, measure=measure, value=round(full + delta, 6),
                                 delta=delta, p_value=0.001, p_adjusted=0.004 if sig else 0.5,
                                 significant=sig and measure == "nDCG@10"))
        conv = contracts.read_table(root / "convergence.parquet", contracts.CONVERGENCE)
        extra = pa.Table.from_pylist([{
            "model": "alpha", "adapter": DORA, "rank": 8, "targets": "all",
            "split": "validation", "measure": "nDCG@10", "epsilon": 0.01,
            "convergence_step": 10, "best_step": 100, "value_at_convergence": 0.5,
            "best_value": 0.51}], schema=contracts.CONVERGENCE.schema)
        contracts.write_table(root / "convergence.parquet", pa.concat_tables([conv, extra]),
                              contracts.CONVERGENCE)
    if rows:
        _append_evaluations(root, rows)
    study["adapters"] = adapters
    study["analyses"] = {
        "boundary": {"sweep": "boundary", "measure": "nDCG@10", "splits": ["dl19", "dl20"]}
        if "boundary" in parts else None,
        "lens": {"models": None, "adapters": ["r8-all"], "splits": ["validation"]}
        if "lens" in parts else None,
        "anatomy": {"models": None, "adapters": None} if "anatomy" in parts else None,
    }
    (root / "study.json").write_text(json.dumps(study))
    return root


def table_lines(md: str, title_start: str, label: str) -> list[str]:
    """The Markdown rows starting with ``| <label>`` of the table under ``### <title>``."""
    part = md.split(f"### {title_start}", 1)[1]
    body = []
    for line in part.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith(f"| {label}"):
            body.append(line)
    return body


@pytest.fixture(scope="module")
def beyond(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    summary = build_beyond_summary(root / "summary")
    out = root / "reports" / "synthetic"
    result = render_report(make_params(), summary, out)
    return out, result, (out / "report.md").read_text()


# ------------------------------------------------------------------------- boundary layer


def test_boundary_table_cells(beyond):
    out, result, md = beyond
    assert "table-boundary" in result["tables"]
    header, rows = md_table(md, "Boundary-layer pruning")
    assert header == ["Model", "Run adapter", "step", "test split", "Boundary b",
                      "LoRA params removed", "nDCG@10 full", "pruned", "Δ", "p (adj.)",
                      "Unmerged scoring speed-up"]
    assert list(rows) == ["Alpha_7B #1"]  # one label; two rows (DL19, DL20) share it
    body = table_lines(md, "Boundary-layer pruning", "Alpha")
    full19 = sweep_full("alpha", "r8-all", "dl19", "nDCG@10", MODELS)
    full20 = sweep_full("alpha", "r8-all", "dl20", "nDCG@10", MODELS)
    assert body == [
        f"| Alpha_7B #1 | r8-all | 100 | DL19 | 2 of 4 | 25.0% | {full19:.4f} | "
        f"{full19 - 0.02:.4f} | -0.0200† | 0.012 | 1.31× |",
        f"| Alpha_7B #1 | r8-all | 100 | DL20 | 2 of 4 | 25.0% | {full20:.4f} | "
        f"{full20 + 0.004:.4f} | +0.0040 | 0.610 | 1.25× |",
    ]
    section = md.split("### Boundary-layer pruning")[1].split("####")[0]
    assert "b = 2 chosen on `validation` by nDCG@10 (0.6000)" in section
    assert "significant" in section


def test_boundary_csv_keeps_the_numbers(beyond):
    import pandas as pd

    out, _, _ = beyond
    csv = pd.read_csv(out / "tables" / "table-boundary.csv")
    removed = csv[(csv["column"] == "LoRA params removed") & (csv["row"] == "alpha/r8-all/dl19")]
    assert removed["value"].iloc[0] == pytest.approx(REMOVED)
    delta = csv[(csv["column"] == "Δ") & (csv["row"] == "alpha/r8-all/dl19")].iloc[0]
    assert delta["value"] == pytest.approx(-0.02) and bool(delta["significant"])
    assert delta["text"] == "-0.0200†"


def test_boundary_curve_marks_the_analysis_b(beyond):
    _, _, md = beyond
    # the rule alone would pick b = 1 (tie with b = 2 on validation): the analysis chose 2
    assert "Alpha_7B #1: b = 2 of 4 layers (validation 0.6000 vs full 0.5800" in md
    assert "the b of the boundary analysis" in md
    # tiny has no boundary analysis: the select_boundary rule (full adapter best)
    assert "Tiny-NeoX 50%: b = 2 of 3 layers" in md


# ------------------------------------------------------------------------- relevance lens


def test_readable_from_rule():
    assert readable_from({1: 0.30, 2: 0.33, 3: 0.36, 4: 0.37}, 0.01) == 3
    assert readable_from({1: 0.40, 2: 0.575, 3: 0.59, 4: 0.58}, 0.01) == 2
    assert readable_from({1: 0.5, 2: 0.4}, 0.0) == 1  # a layer above the final one counts
    assert readable_from({}, 0.01) is None


def test_lens_table_and_figure(beyond):
    out, result, md = beyond
    assert "lens" in result["figures"] and (out / "figures" / "lens.png").is_file()
    header, rows = md_table(md, "Relevance readable from layer")
    assert header == ["Checkpoint", "Alpha_7B #1 readable from layer", "last layer",
                      "Tiny-NeoX 50%‡ readable from layer", "last layer"]
    assert rows == {
        "base": ["3 of 4", "0.3700", "1 of 3", "0.2000"],
        "50": ["3 of 4", "0.5000", "–", "–"],
        "100": ["2 of 4", "0.5800", "3 of 3", "0.5000"],
    }
    assert "ε = 0.01" in md


def test_lens_epsilon_from_params(tmp_path):
    summary = build_beyond_summary(tmp_path / "summary", parts=("lens",))
    render_report(make_params(lens={"epsilon": 0.2}), summary, tmp_path / "out")
    _, rows = md_table((tmp_path / "out" / "report.md").read_text(),
                       "Relevance readable from layer")
    assert rows["base"][0] == "1 of 4" and rows["100"][0] == "1 of 4"
    assert rows["100"][2] == "2 of 3"  # tiny: 0.3 >= 0.5 - 0.2


# --------------------------------------------------------------------------- LoRA anatomy


def _ranks(values: list[float]) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean rank: Spearman's ranks, by hand."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return np.asarray(ranks)


def test_anatomy_correlation_against_hand_computation(beyond):
    _, result, md = beyond
    assert "table-anatomy-correlation" in result["tables"]
    assert "anatomy-correlation" in result["figures"]
    header, rows = md_table(md, "Update size vs ablation drop")
    assert header == ["Model", "Run adapter", "step", "split", "Spearman ρ", "p", "n"]
    for model in ("alpha", "tiny"):
        info = MODELS[model]
        roles = ATTN[info["arch"]] + MLP[info["arch"]]
        fro, drop = [], []
        for layer in range(info["layers"]):
            for j, _ in enumerate(roles):
                fro.append(fro_value(model, "r8-all", 100, layer, j))
                drop.append(-(-0.01 * (layer + 1) + 0.004 * j))  # the heatmap sweep's deltas
        rx, ry = _ranks(fro), _ranks(drop)
        rho = float(np.corrcoef(rx, ry)[0, 1])
        cells = table_lines(md, "Update size vs ablation drop", info["label"])[0].split(" | ")
        assert cells[1:4] == ["r8-all", "100", "DL19"]
        assert float(cells[4]) == pytest.approx(rho, abs=5e-5), model
        assert cells[6].rstrip(" |") == str(len(fro))


def test_anatomy_effective_rank_table(beyond):
    out, result, md = beyond
    for key in ("anatomy-fro", "anatomy-mass"):
        assert key in result["figures"] and (out / "figures" / f"{key}.png").is_file()
    header, rows = md_table(md, "Effective rank of the LoRA update per role")
    assert header == ["Role", "Alpha_7B #1 r1", "r8", "Tiny-NeoX 50%‡ r1", "r8"]
    roles = ATTN["llama"] + MLP["llama"]
    j = roles.index("v")
    expected = np.mean([effective_rank(sigma_values(8, layer, j)) for layer in range(4)])
    assert rows["v"][1] == f"{expected:.2f}"
    assert rows["v"][0] == "1.00"       # rank 1: one direction
    assert rows["q"][2:] == ["–", "–"]  # tiny (GPT-NeoX) has no q role
    everything = np.mean([effective_rank(sigma_values(8, layer, j))
                          for layer in range(3) for j in range(4)])
    assert rows["all roles"][3] == f"{everything:.2f}"


# ------------------------------------------------------------------ post-hoc compression


def test_compression_table(beyond):
    _, result, md = beyond
    assert "table-compression" in result["tables"]
    header, rows = md_table(md, "Post-hoc rank compression")
    assert header == ["Adapter", "Alpha_7B #1 nDCG@10", "Δ vs full"]  # tiny: not compressed
    full = sweep_full("alpha", "r8-all", "dl19", "nDCG@10", MODELS)
    r1 = sweep_full("alpha", "r1-all", "dl19", "nDCG@10", MODELS)
    assert rows == {
        "BM25 (first stage)": ["0.5058", "–"],
        "r1-all (trained at rank 1)": [f"{r1:.4f} (100)", "–"],
        "r8-all (trained at rank 8)": [f"{full:.4f} (100)", "–"],
        "r8-all → rank 4 (SVD)": [f"{full - 0.004:.4f} (100)", "-0.0040"],
        "r8-all → rank 2 (SVD)": [f"{full - 0.03:.4f} (100)", "-0.0300†"],
        "r8-all → rank 1 (SVD)": [f"{full - 0.09:.4f} (100)", "-0.0900†"],
    }


# ---------------------------------------------------------------------------- variants


def test_variants_table(beyond):
    _, result, md = beyond
    header, _ = md_table(md, "LoRA variants")
    assert header == ["Model", "Run adapter", "variant", "Last checkpoint (DL19) MAP", "MRR",
                      "nDCG@10", "Convergence step", "Component ablation: Δ nDCG@10 "
                      "No LoRA updates", "MLP updates only", "MHA updates only"]
    lines = table_lines(md, "LoRA variants", "Alpha")
    plain = sweep_full("alpha", "r8-all", "dl19", "nDCG@10", MODELS)
    assert lines[0].split(" | ")[1:3] == ["r8-all", "LoRA"]
    assert lines[0].split(" | ")[5:8] == [f"{plain:.4f} (100)", "50", "-0.3000†"]
    assert lines[1].split(" | ")[1:3] == [DORA, "DoRA"]
    assert lines[1].split(" | ")[5:] == [f"{plain + DORA_OFFSET:.4f} (100)", "10", "-0.2500†",
                                         "-0.1000", "-0.0400 |"]
    assert len(lines) == 2  # r1-all and r8-mlp have no variant: not repeated here


def test_plain_lora_only_is_one_line(tmp_path):
    summary = build_beyond_summary(tmp_path / "summary", parts=())
    result = render_report(make_params(), summary, tmp_path / "out")
    assert result["omitted"]["table-variants"].startswith(
        "LoRA variants: this study trains plain LoRA only")


# ------------------------------------------------------------------------ missing inputs


def test_missing_inputs_give_one_line_notes(tmp_path):
    summary = build_summary(tmp_path / "summary")  # no beyond inputs at all, no `analyses`
    result = render_report(make_params(), summary, tmp_path / "out")
    notes = result["omitted"]
    assert notes["table-boundary"] == ("Boundary-layer table not produced: the summary has no "
                                       "`boundary.parquet`.")
    assert notes["lens"] == "Relevance lens not produced: the summary has no `lens.parquet`."
    assert notes["anatomy-fro"] == ("LoRA update anatomy not produced: the summary has no "
                                    "`anatomy.parquet`.")
    assert notes["table-compression"] == (
        "Post-hoc rank compression not produced: the study has no SVD compression sweep "
        "(`generate: svd`).")
    md = (tmp_path / "out" / "report.md").read_text()
    for note in notes.values():
        assert note in md and "\n" not in note


def test_analysis_off_and_empty_table_notes(tmp_path):
    summary = build_beyond_summary(tmp_path / "summary", parts=("boundary",))
    # summarize writes an empty lens table when no lens job ran
    _write(summary / "lens.parquet", LENS_TABLE, [])
    study = json.loads((summary / "study.json").read_text())
    study["analyses"]["lens"] = {"models": None, "adapters": None, "splits": None}
    (summary / "study.json").write_text(json.dumps(study))
    result = render_report(make_params(), summary, tmp_path / "out")
    assert result["omitted"]["lens"] == "Relevance lens not produced: `lens.parquet` has no rows."
    assert result["omitted"]["anatomy-fro"] == (
        "LoRA update anatomy not produced: the study config has no `analyses.anatomy`.")
    assert "table-boundary" in result["tables"]


# -------------------------------------------------------------------------- all formats


def test_all_formats_render(beyond):
    out, result, md = beyond
    html = (out / "report.html").read_text()
    for anchor in ("boundary-layer", "lens", "anatomy", "compression", "variants"):
        assert f'<section id="{anchor}">' in html
    for key in ("table-boundary", "table-lens", "table-anatomy-rank",
                "table-anatomy-correlation", "table-compression", "table-variants"):
        assert f'id="{key}"' in html and (out / f"{key}.tex").is_file()
        check_latex((out / f"{key}.tex").read_text())
    assert html.count("data:image/png;base64,") >= 12
    tex = (out / "report.tex").read_text()
    check_latex(tex)
    assert r"-0.0200\textsuperscript{\dag}" in tex and r"25.0\%" in tex
    assert r"1.31$\times$" in tex and r"\textless{}0.001" in tex  # escaped, not math
    assert not result["omitted"].keys() & {"table-boundary", "lens", "anatomy-fro",
                                           "table-compression", "table-variants"}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(beyond, tmp_path):
    out, _, _ = beyond
    shutil.copytree(out, tmp_path / "r")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                           "report.tex"], cwd=tmp_path / "r", capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (tmp_path / "r" / "report.log").read_text(errors="replace")
    assert "Overfull \\vbox" not in log  # the long provenance list breaks across pages


def test_partial_inputs_leave_blanks_and_notes(tmp_path):
    """A boundary comparison without its evaluation rows, anatomy without a per-(layer, role)
    sweep, a compression sweep named in params that does not exist: notes, no crash."""
    summary = build_beyond_summary(tmp_path / "summary", parts=("boundary", "anatomy"))
    table = contracts.read_table(summary / "evaluations.parquet", contracts.EVALUATIONS)
    keep = [s != "boundary_pruned" for s in table.column("sweep").to_pylist()]
    contracts.write_table(summary / "evaluations.parquet", table.filter(pa.array(keep)),
                          contracts.EVALUATIONS)
    params = make_params(heatmap=None, compression={"sweep": "svd_sweep"})
    result = render_report(params, summary, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    lines = table_lines(md, "Boundary-layer pruning", "Alpha")
    assert lines[0].split(" | ")[4:10] == ["2 of 4", "25.0%", "–", "–", "–", "–"]
    assert "No `boundary_pruned` evaluation rows for Alpha_7B #1 `r8-all` on `dl19`" in md
    assert result["omitted"]["table-anatomy-correlation"].startswith(
        "Update size vs ablation drop not produced: the study has no `each_layer_role` sweep")
    assert "table-anatomy-rank" in result["tables"]
    assert result["omitted"]["table-compression"] == (
        "Post-hoc rank compression not produced: sweep `svd_sweep` has no `svd_r<k>` rows.")
