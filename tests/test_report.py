"""The report renderer on a small synthetic results set built here: tables checked cell by
cell in the rendered Markdown, notes for missing parts, paper values beside reproduced ones,
a self-contained HTML page, well-formed LaTeX, and the reference data against PAPER.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lorascope.core import contracts
from lorascope.core.contrasts import CONTRASTS
from lorascope.report import render_report
from lorascope.analyses.boundary.report import choose_boundary

REPO = Path(__file__).resolve().parents[1]
PAPER_MD = REPO.parent / "shared" / "PAPER.md"
PAPER_YAML = REPO / "src" / "lorascope" / "reference" / "paper.yaml"

MEASURES = ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
MEASURE_OFFSET = {"nDCG@10": 0.0, "RR(rel=2)": 0.2, "AP(rel=2)": -0.1}
SPLIT_OFFSET = {"validation": 0.01, "dl19": 0.0, "dl20": -0.02}
STEPS = [5, 10, 50, 100]
STEP_BASE = {5: 0.3, 10: 0.35, 50: 0.5, 100: 0.55}
SPLITS = ["validation", "dl19", "dl20"]
BM25 = {"nDCG@10": 0.5058, "RR(rel=2)": 0.7024, "AP(rel=2)": 0.3773}
ATTN = {"llama": ["q", "k", "v", "o"], "neox": ["qkv", "o"]}
MLP = {"llama": ["gate", "up", "down"], "neox": ["up", "down"]}

# two synthetic models: a "real" one with awkward characters in its label, a mechanics-only one
MODELS = {
    "alpha": {"label": "Alpha_7B #1", "mechanics_only": False, "arch": "llama", "layers": 4,
              "offset": 0.0},
    "tiny": {"label": "Tiny-NeoX 50%", "mechanics_only": True, "arch": "neox", "layers": 3,
             "offset": -0.1},
}
PAPER_MODELS = {
    "llama3": {"label": "LLaMA-3.1-8B", "mechanics_only": False, "arch": "llama", "layers": 4,
               "offset": 0.0},
    "pythia": {"label": "Pythia-6.9B", "mechanics_only": False, "arch": "neox", "layers": 3,
               "offset": -0.05},
}
ADAPTERS = {"r1-all": (1, "all"), "r8-all": (8, "all"), "r8-mlp": (8, "mlp")}
COMPONENTS = {"no_lora": -0.3, "mlp_only": -0.12, "mha_only": -0.05}
LAYERS = {"layers_5_15": -0.08, "up_gate": -0.02, "layers_0_15": -0.04}
# (model, ablation, measure) whose drop is significant
SIGNIFICANT = {
    ("alpha", "no_lora", "nDCG@10"), ("alpha", "no_lora", "RR(rel=2)"),
    ("alpha", "mlp_only", "nDCG@10"), ("alpha", "layers_5_15", "nDCG@10"),
}
CONVERGENCE = {("alpha", "r1-all"): 50, ("alpha", "r8-all"): 50, ("tiny", "r8-all"): 100}
BOUNDARY_VALIDATION = {0: 0.40, 1: 0.60, 2: 0.60}  # alpha; full (b = 3) = 0.58


def ckpt_value(model: str, adapter: str, step: int, split: str, measure: str, models) -> float:
    if (model, adapter, step, split, measure) == ("alpha", "r8-all", 50, "dl19", "nDCG@10"):
        return 0.5123
    rank = ADAPTERS[adapter][0]
    return round(STEP_BASE[step] + 0.001 * rank + MEASURE_OFFSET[measure]
                 + SPLIT_OFFSET[split] + models[model]["offset"], 6)


def sweep_full(model: str, adapter: str, split: str, measure: str, models) -> float:
    return ckpt_value(model, adapter, 100, split, measure, models)


def _row(**kw):
    base = {"model": "", "adapter": "", "rank": 0, "targets": "", "variant": "", "step": 0,
            "sweep": "",
            "split": "", "ablation": "", "measure": "", "value": None, "delta": None,
            "p_value": None, "p_adjusted": None, "significant": False, "queries": 43}
    base.update(kw)
    return base


def build_summary(root: Path, *, models=MODELS, sweeps=("components", "layers",
                  "per_layer_role", "boundary"), training_log=True) -> Path:
    """Write evaluations / convergence / training_log Parquet tables and study.json."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split in SPLITS:
        for measure in MEASURES:
            rows.append(_row(sweep="first_stage", ablation="first_stage", split=split,
                             measure=measure, value=BM25[measure] + SPLIT_OFFSET[split]))
    study_sweeps: dict = {s: {} for s in sweeps}
    for model, info in models.items():
        roles = ATTN[info["arch"]] + MLP[info["arch"]]
        layers = info["layers"]
        for adapter, (rank, targets) in ADAPTERS.items():
            common = dict(model=model, adapter=adapter, rank=rank, targets=targets)
            for step in STEPS:
                for split in SPLITS:
                    for measure in MEASURES:
                        v = ckpt_value(model, adapter, step, split, measure, models)
                        rows.append(_row(**common, step=step, sweep="checkpoints", split=split,
                                         ablation="full", measure=measure, value=v, delta=0.0,
                                         p_value=1.0, p_adjusted=1.0))

        def add_sweep(sweep, adapter, splits, ablations):
            rank, targets = ADAPTERS[adapter]
            study_sweeps[sweep][model] = {name: zeroed for name, (_, zeroed) in ablations.items()}
            for split in splits:
                for measure in MEASURES:
                    full = sweep_full(model, adapter, split, measure, models)
                    for name, (delta, _) in ablations.items():
                        d = delta(split, measure) if callable(delta) else delta
                        sig = (model, name, measure) in SIGNIFICANT
                        rows.append(_row(model=model, adapter=adapter, rank=rank,
                                         targets=targets, step=100, sweep=sweep, split=split,
                                         ablation=name, measure=measure, value=round(full + d, 6),
                                         delta=d, p_value=0.001 if sig else 0.4,
                                         p_adjusted=0.004 if sig else 0.8, significant=sig))

        if "components" in sweeps:
            abl = {"full": (0.0, [])}
            abl.update({k: (d, [[0, "q"]]) for k, d in COMPONENTS.items()})
            add_sweep("components", "r8-all", ["dl19", "dl20"], abl)
        if "layers" in sweeps:
            abl = {"full": (0.0, [])}
            abl.update({k: (d, [[0, "up"]]) for k, d in LAYERS.items()})
            add_sweep("layers", "r8-mlp", ["dl19"], abl)
        if "per_layer_role" in sweeps:
            abl = {"full": (0.0, [])}
            for layer in range(layers):
                for j, role in enumerate(roles):
                    abl[f"drop_layer_{layer:02d}_{role}"] = (
                        -0.01 * (layer + 1) + 0.004 * j, [[layer, role]])
            add_sweep("per_layer_role", "r8-all", ["dl19"], abl)
        if "boundary" in sweeps:
            abl = {"full": (0.0, [])}
            for b in range(layers - 1):
                full_val = 0.58

                def delta(split, measure, b=b, full_val=full_val):
                    if model == "alpha" and split == "validation" and measure == "nDCG@10":
                        return round(BOUNDARY_VALIDATION[b] - sweep_full(
                            model, "r8-all", split, measure, models), 6)
                    return -0.05 * (layers - 1 - b)

                abl[f"keep_layers_0_{b:02d}"] = (
                    delta, [[layer, r] for layer in range(b + 1, layers) for r in roles])
            add_sweep("boundary", "r8-all", SPLITS, abl)

    if "boundary" in sweeps and "alpha" in models:
        # the full adapter's validation nDCG@10 of alpha is 0.58 in this sweep
        for r in rows:
            if (r["model"], r["sweep"], r["split"], r["measure"]) == (
                    "alpha", "boundary", "validation", "nDCG@10") and r["ablation"] == "full":
                r["value"] = 0.58
    ev = {k: [r[k] for r in rows] for k in contracts.EVALUATIONS.columns}
    contracts.write_table(root / "evaluations.parquet", ev, contracts.EVALUATIONS)

    conv = []
    for (model, adapter), step in CONVERGENCE.items():
        if model in models:
            rank, targets = ADAPTERS[adapter]
            conv.append({"model": model, "adapter": adapter, "rank": rank, "targets": targets,
                         "split": "validation", "measure": "nDCG@10", "epsilon": 0.01,
                         "convergence_step": step, "best_step": 100, "value_at_convergence": 0.5,
                         "best_value": 0.51})
    contracts.write_table(root / "convergence.parquet",
                          {k: [c[k] for c in conv] for k in contracts.CONVERGENCE.columns},
                          contracts.CONVERGENCE)
    # alpha's components sweep compares MHA-only with MLP-only (significant) and MLP-only with
    # no LoRA (not)
    contrasts = [
        {"model": "alpha", "adapter": "r8-all", "step": 100, "sweep": "components",
         "split": "dl19", "a": a, "b": b, "measure": "nDCG@10", "value_a": 0.5, "value_b": 0.4,
         "delta": delta, "p_value": p / 2, "p_adjusted": p, "significant": p < 0.05,
         "queries": 43}
        for a, b, delta, p in (("mha_only", "mlp_only", 0.07, 0.012),
                               ("mlp_only", "no_lora", 0.18, 0.2))
        if "alpha" in models
    ]
    contracts.write_table(root / "contrasts.parquet",
                          {k: [c[k] for c in contrasts] for k in CONTRASTS.columns},
                          CONTRASTS)
    if training_log:
        log = []
        for model in models:
            for adapter in ADAPTERS:
                for step in range(1, 101):
                    log.append({"model": model, "adapter": adapter, "step": step,
                                "loss": 2.7 / (1 + 0.05 * step) + 0.01 * (step % 7), "lr": 1e-4})
        contracts.write_table(root / "training_log.parquet",
                              {k: [x[k] for x in log] for k in contracts.TRAINING_LOG.columns},
                              contracts.TRAINING_LOG)
    study = {
        "study": "synthetic",
        "config_hash": "cafe1234",
        "models": {
            m: {"label": i["label"], "mechanics_only": i["mechanics_only"],
                "model_type": i["arch"], "num_layers": i["layers"],
                "roles": ATTN[i["arch"]] + MLP[i["arch"]]}
            for m, i in models.items()
        },
        "splits": {"validation": {"dataset": "dl21", "depth": 20, "queries": 8},
                   "dl19": {"dataset": "dl19", "depth": 20, "queries": None},
                   "dl20": {"dataset": "dl20", "depth": 20, "queries": None}},
        "sweeps": study_sweeps,
        "provenance": {"git_commit": "0123456789ab+dirty",
                       "versions": {"python": "3.11.9", "torch": "2.13.0", "peft": "0.17.1"},
                       "hardware": {"cpu_count": 2, "gpu": None},
                       "created": "2026-01-01T00:00:00Z"},
        "wall_times": {"train_lora": 3723.5, "evaluate": 42.25},
        "inputs": {"evaluations": "results/synthetic/summary/evaluations.parquet"},
    }
    (root / "study.json").write_text(json.dumps(study))
    return root


def make_params(models=("alpha", "tiny"), reference=None, **overrides) -> dict:
    params = {
        "study": "synthetic", "reference": reference, "decimals": 4,
        "main_split": "dl19", "companion_splits": ["dl20"], "models": list(models),
        "table1": {"adapter": "r8-all", "measures": [["MAP", "AP(rel=2)"], ["MRR", "RR(rel=2)"],
                                                     ["nDCG@10", "nDCG@10"]]},
        "table2": {"targets": "all", "measure": "nDCG@10"},
        "table3": {"sweep": "components", "adapter": "r8-all",
                   "rows": [["no_lora", "No LoRA updates"], ["mlp_only", "MLP updates only"],
                            ["mha_only", "MHA updates only"], ["full", "Both MLP & MHA"]],
                   "measures": [["MRR", "RR(rel=2)"], ["nDCG", "nDCG@10"]]},
        "table4": {"sweep": "layers", "adapter": "r8-mlp",
                   "rows": [["full", "All layers"], ["layers_5_15", "Layers 5 to 15"],
                            ["up_gate", "All layers, up & gate only"],
                            ["layers_0_15", "Layers 0 to 15"]],
                   "measure": "nDCG@10"},
        "heatmap": {"sweep": "per_layer_role", "adapter": "r8-all", "measure": "nDCG@10"},
        "boundary": {"sweep": "boundary", "adapter": "r8-all", "measure": "nDCG@10",
                     "selection_split": "validation"},
    }
    params.update(overrides)
    return params


# ------------------------------------------------------------------------ markdown parsing


def md_table(md: str, title_start: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and rows (label -> value cells) of the table under a ``### <title>``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title_start}"))
    body = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            body.append(line)
        elif body:
            break

    def cells(line):
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]

    header = cells(body[0])
    rows = {cells(line)[0]: cells(line)[1:] for line in body[2:]}
    return header, rows


def fmt(v: float) -> str:
    return f"{v:.4f}"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    summary = build_summary(root / "summary")
    out = root / "reports" / "synthetic"
    result = render_report(make_params(), summary, out)
    return out, result


@pytest.fixture(scope="module")
def rendered_paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    summary = build_summary(root / "summary", models=PAPER_MODELS)
    out = root / "reports" / "paper"
    result = render_report(make_params(models=("llama3", "pythia"), reference="paper"),
                           summary, out)
    return out, result


# ------------------------------------------------------------------------------- tables


def test_files_written(rendered):
    out, result = rendered
    for name in ("report.md", "report.tex", "report.html", "table1.tex", "table2.tex",
                 "table3.tex", "table4.tex", "table1_dl20.tex", "tables/table1.csv",
                 "tables/table2.csv", "tables/table3.csv", "tables/table4.csv",
                 "figures/learning-curves-dl19.png", "figures/learning-curves-dl19.pdf",
                 "figures/rank-comparison-dl19.png", "figures/table3-bars-dl19.png",
                 "figures/heatmap-alpha.png", "figures/heatmap-tiny.png",
                 "figures/boundary.png", "figures/training-loss.png"):
        assert (out / name).is_file(), name
        assert name in result["files"]
    assert result["tables"][:4] == ["table1", "table2", "table3", "table4"]
    # no temporary directory left beside the report
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_table1_cells(rendered):
    out, _ = rendered
    header, rows = md_table((out / "report.md").read_text(), "Table 1: ")
    assert "DL19" in (out / "report.md").read_text().split("### Table 1: ")[1].splitlines()[0]
    assert header == ["Step", "Alpha_7B #1 MAP", "MRR", "nDCG@10", "Tiny-NeoX 50%‡ MAP",
                      "MRR", "nDCG@10"]
    assert list(rows) == ["BM25 (first stage)", "5", "10", "50", "100"]
    assert rows["BM25 (first stage)"] == ["0.3773", "0.7024", "0.5058"] * 2
    for step in STEPS:
        expected = [fmt(ckpt_value(m, "r8-all", step, "dl19", meas, MODELS))
                    for m in ("alpha", "tiny") for meas in ("AP(rel=2)", "RR(rel=2)", "nDCG@10")]
        assert rows[str(step)] == expected, step
    assert rows["50"][2] == "0.5123"
    assert rows["100"] == ["0.4580", "0.7580", "0.5580", "0.3580", "0.6580", "0.4580"]


def test_table2_cells_with_convergence_steps(rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    header, rows = md_table(md, "Table 2: ")
    assert header == ["Rank", "Alpha_7B #1", "Tiny-NeoX 50%‡"]
    assert rows["BM25 (first stage)"] == ["0.5058", "0.5058"]
    assert rows["8"] == ["0.5123 (50)", "0.4580 (100)"]
    # alpha r1 converged at 50; tiny r1 has no convergence record: last checkpoint, noted
    assert rows["1"] == ["0.5010 (50)", "0.4510 (100)"]
    assert "No convergence record" in md and "Tiny-NeoX 50% `r1-all`" in md
    assert "within ε = 0.01" in md


def test_table3_cells_and_significance_markers(rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    header, rows = md_table(md, "Table 3: ")
    assert header == ["Setting", "Alpha_7B #1 MRR", "nDCG", "Tiny-NeoX 50%‡ MRR", "nDCG"]
    assert list(rows) == ["BM25 (first stage)", "No LoRA updates", "MLP updates only",
                          "MHA updates only", "Both MLP & MHA"]
    assert rows["BM25 (first stage)"] == ["0.7024", "0.5058", "0.7024", "0.5058"]
    for label, ablation in (("No LoRA updates", "no_lora"), ("MLP updates only", "mlp_only"),
                            ("MHA updates only", "mha_only"), ("Both MLP & MHA", "full")):
        expected = []
        for model in ("alpha", "tiny"):
            for meas in ("RR(rel=2)", "nDCG@10"):
                v = sweep_full(model, "r8-all", "dl19", meas, MODELS) + COMPONENTS.get(ablation, 0)
                mark = "†" if (model, ablation, meas) in SIGNIFICANT else ""
                expected.append(fmt(v) + mark)
        assert rows[label] == expected, label
    # exactly the three significant cells carry the marker
    marked = [c for r in rows.values() for c in r if c.endswith("†")]
    assert marked == ["0.4580†", "0.2580†", "0.4380†"]
    assert "head-only reading" in md and "trained score head" in md
    # the sweep's pairwise tests, under the table, for the model that has them
    table3 = md.split("### Table 3: ")[1].split("###")[0]
    assert ("Pairwise, Alpha_7B #1 (difference of the first minus the second; 43 queries; "
            "paired test corrected over the pairs, †: significant): “MHA updates only” vs "
            "“MLP updates only”: nDCG@10 +0.0700 (p = 0.012 †); “MLP updates only” vs “No LoRA "
            "updates”: nDCG@10 +0.1800 (p = 0.2).") in table3.replace("\\_", "_")
    assert "Pairwise, Tiny" not in table3
    assert "†" in md.split("### Table 3: ")[1].split("###")[0].split("| Both MLP & MHA")[1]


def test_table4_cells(rendered):
    out, _ = rendered
    header, rows = md_table((out / "report.md").read_text(), "Table 4: ")
    assert header == ["LoRA updates kept", "Alpha_7B #1", "Tiny-NeoX 50%‡"]
    assert rows["BM25 (first stage)"] == ["0.5058", "0.5058"]
    assert rows["All layers"] == ["0.5580", "0.4580"]
    assert rows["Layers 5 to 15"] == ["0.4780†", "0.3780"]
    assert rows["All layers, up & gate only"] == ["0.5380", "0.4380"]
    assert rows["Layers 0 to 15"] == ["0.5180", "0.4180"]


def test_companion_tables_name_their_split(rendered):
    out, result = rendered
    md = (out / "report.md").read_text()
    header, rows = md_table(md, "Table 1: Relevance emerging over checkpoints — DL20")
    assert rows["BM25 (first stage)"] == ["0.3573", "0.6824", "0.4858"] * 2
    assert rows["10"][2] == fmt(ckpt_value("alpha", "r8-all", 10, "dl20", "nDCG@10", MODELS))
    # the layers sweep ran on dl19 only: its companion table is a one-line note
    assert result["omitted"]["table4_dl20"] == (
        "Table 4 (DL20) not produced: no rows for sweep `layers`, adapter `r8-mlp`, split `dl20`."
    )
    assert result["omitted"]["table4_dl20"] in md


def test_csv_holds_every_cell(rendered):
    import pandas as pd

    out, _ = rendered
    t2 = pd.read_csv(out / "tables" / "table2.csv")
    cell = t2[(t2["model"] == "alpha") & (t2["row"] == "8")].iloc[0]
    assert cell["value"] == pytest.approx(0.5123) and cell["step"] == 50
    assert cell["text"] == "0.5123 (50)"
    t3 = pd.read_csv(out / "tables" / "table3.csv")
    assert int(t3["significant"].sum()) == 3
    assert set(t3["source"]) == {"first_stage", "reproduced"}


def test_mechanics_only_marked_everywhere(rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    for n in range(1, 5):
        section = md.split(f"### Table {n}: ")[1].split("### ")[0]
        assert "Tiny-NeoX 50%‡" in section and "mechanics only" in section
    html = (out / "report.html").read_text()
    assert '<sup title="mechanics only">‡</sup>' in html


def test_provenance_block(rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    prov = md.split("## Provenance")[1]
    for text in ("cafe1234", "0123456789ab+dirty", "2.13.0", "cpu_count", "train_lora",
                 "1h 02m 04s", "42.2 s", "results/synthetic/summary/evaluations.parquet",
                 "sweep `components`, adapter `r8-all`, split `dl19`"):
        assert text in prov, text


def test_boundary_choice():
    # lorascope.analyses.boundary.selection.select_boundary's rule: the best value, ties to the smallest b
    assert choose_boundary({0: 0.4, 1: 0.6, 2: 0.6, 3: 0.58}, "nDCG@10", 4) == 1
    assert choose_boundary({0: 0.4, 1: 0.5, 2: 0.55, 3: 0.58}, "nDCG@10", 4) == 3
    assert choose_boundary({0: 0.4, 1: 0.6}, "nDCG@10", 4) is None  # no full-adapter point
    assert choose_boundary({}, "nDCG@10", 4) is None


def test_boundary_figure_caption(rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    # ties (b = 1 and b = 2 both 0.60 on validation) go to the smallest b
    assert "Alpha_7B #1: b = 1 of 4 layers (validation 0.6000 vs full 0.5800; DL19 0.4580" in md
    assert "Tiny-NeoX 50%: b = 2 of 3 layers (validation" in md  # the full adapter is best


# ------------------------------------------------------------------------------- formats


def test_html_is_self_contained(rendered):
    out, _ = rendered
    html = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert len([r for r in refs if r.startswith("data:image/png;base64,")]) >= 8
    assert "<link" not in html and "<script" not in html and "url(" not in html
    assert "@import" not in html
    for key in ("table1", "table2", "table3", "table4", "table1_dl20", "table2_dl20",
                "table3_dl20"):
        assert f'id="{key}"' in html
    assert "0.5123 (50)" in html and "Alpha_7B #1" in html and "Tiny-NeoX 50%" in html
    assert html.count('<sup title="significant">†</sup>') >= 4


def _strip_latex_escapes(tex: str) -> str:
    return re.sub(r"\\[{}%&#_$]", "", tex)


def check_latex(tex: str) -> None:
    body = "\n".join(line.split("%", 1)[0] if not re.search(r"\\%", line) else
                     re.sub(r"(?<!\\)%.*$", "", line) for line in tex.splitlines())
    plain = _strip_latex_escapes(body)
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", plain):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    assert not re.search(r"(?<!\\)[_#]", plain.replace("\\_", "")), "unescaped _ or #"
    # every tabular row of a results table has as many & as the column spec asks for
    tabular = r"\\begin\{tabular\}\{((?:[^{}]|\{[^{}]*\})*)\}(.*?)\\end\{tabular\}"
    for spec, content in re.findall(tabular, body, flags=re.S):
        if "p{" in spec:
            continue
        ncols = len(re.findall(r"[lrc]", spec))
        for line in content.splitlines():
            if line.endswith(r"\\") and "multicolumn" not in line:
                assert len(re.findall(r"(?<!\\)&", line)) == ncols - 1, line


def test_latex_well_formed(rendered):
    out, _ = rendered
    tex = (out / "report.tex").read_text()
    assert tex.startswith(r"\documentclass") and tex.rstrip().endswith(r"\end{document}")
    for macro in (r"\toprule", r"\midrule", r"\bottomrule", r"\usepackage{booktabs}",
                  r"\includegraphics", "figures/boundary.pdf"):
        assert macro in tex
    assert r"Alpha\_7B \#1" in tex and r"Tiny-NeoX 50\%" in tex and r"MLP \& MHA" in tex
    assert r"0.4580\textsuperscript{\dag}" in tex and r"\textsuperscript{\ddag}" in tex
    assert r"\texttt{r8-all}" in tex
    check_latex(tex)
    for key in ("table1", "table2", "table3", "table4", "table1_dl20"):
        alone = (out / f"{key}.tex").read_text()
        assert r"\begin{table}" in alone and r"\toprule" in alone
        check_latex(alone)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(rendered, tmp_path):
    out, _ = rendered
    shutil.copytree(out, tmp_path / "r")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                           "report.tex"], cwd=tmp_path / "r", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


# ------------------------------------------------------------------------ missing parts


def test_missing_parts_give_one_line_notes(tmp_path):
    summary = build_summary(tmp_path / "summary", sweeps=("components",), training_log=False)
    params = make_params(table3=None, heatmap=None)
    result = render_report(params, summary, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    notes = result["omitted"]
    assert notes["table4"] == "Table 4 not produced: the study has no `layers` sweep."
    assert notes["table3"].startswith("Table 3 not produced:")
    assert notes["heatmap"].startswith("Layer × role heatmap not produced")
    assert notes["boundary"] == ("Boundary curve not produced: the study has no `boundary` "
                                 "sweep (adapter `r8-all`, measure `nDCG@10`).")
    assert notes["training-loss"] == "Training loss curves not produced: no training log."
    for note in notes.values():
        assert note in md and "\n" not in note
    assert "### Table 4" not in md and "### Table 1" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Table 4 not produced: the study has no <code>layers</code> sweep." in html
    check_latex((tmp_path / "out" / "report.tex").read_text())


def test_rerender_removes_stale_files(tmp_path):
    out = tmp_path / "out"
    summary = build_summary(tmp_path / "summary", sweeps=("layers", "per_layer_role"),
                            training_log=False)
    render_report(make_params(), summary, out)
    assert (out / "table4.tex").is_file() and (out / "figures" / "heatmap-alpha.png").is_file()
    render_report(make_params(table4=None, heatmap=None), summary, out)
    assert not (out / "table4.tex").exists()
    assert not (out / "figures" / "heatmap-alpha.png").exists()
    assert not (out / "tables" / "table4.csv").exists()


def test_empty_summary_does_not_crash(tmp_path):
    (tmp_path / "summary").mkdir()
    result = render_report(make_params(), tmp_path / "summary", tmp_path / "out")
    assert result["tables"] == [] and result["figures"] == []
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Table 1 (DL19) not produced" in md and "Table 2 (DL19) not produced" in md
    assert (tmp_path / "out" / "report.html").is_file()


# ---------------------------------------------------------------------- paper reference


def test_paper_values_beside_reproduced(rendered_paper):
    out, _ = rendered_paper
    md = (out / "report.md").read_text()
    header, rows = md_table(md, "Table 2: ")
    assert header == ["Rank", "LLaMA-3.1-8B reproduced", "paper", "Pythia-6.9B reproduced",
                      "paper"]
    assert rows["8"][1] == "0.7615 (175)" and rows["8"][3] == "0.7490 (95)"
    assert rows["2"] == ["–", "0.7402 (100)", "–", "0.7556 (100)"]
    assert rows["BM25 (first stage)"] == ["0.5058", "–", "0.5058", "–"]

    header, rows = md_table(md, "Table 1: ")
    assert header == ["Step", "LLaMA-3.1-8B MAP", "paper", "MRR", "paper", "nDCG@10", "paper",
                      "Pythia-6.9B MAP", "paper", "MRR", "paper", "nDCG@10", "paper"]
    assert rows["5"][:6] == [fmt(ckpt_value("llama3", "r8-all", 5, "dl19", "AP(rel=2)",
                                            PAPER_MODELS)), "0.1887",
                             fmt(ckpt_value("llama3", "r8-all", 5, "dl19", "RR(rel=2)",
                                            PAPER_MODELS)), "0.4220",
                             fmt(ckpt_value("llama3", "r8-all", 5, "dl19", "nDCG@10",
                                            PAPER_MODELS)), "0.1855"]
    assert rows["300"][1] == "0.5141" and rows["300"][0] == "–"   # paper-only step

    header, rows = md_table(md, "Table 3: ")
    assert rows["No LoRA updates"][1] == "0.4220" and rows["No LoRA updates"][3] == "0.1855"
    assert rows["Both MLP & MHA"][5] == "0.9709"
    header, rows = md_table(md, "Table 4: ")
    assert rows["All layers"] == ["0.5580", "0.7497", "0.5080", "0.7570"]
    assert rows["Layers 5 to 15"][1] == "0.6678"

    # companion tables (DL20) carry no DL19 paper values
    header, rows = md_table(md, "Table 2: Effect of LoRA rank — DL20")
    assert header == ["Rank", "LLaMA-3.1-8B", "Pythia-6.9B"]
    html = (out / "report.html").read_text()
    assert '<td class="paper gstart">0.7615 (175)</td>' not in html
    assert '<td class="paper">0.7615 (175)</td>' in html


def test_reference_without_paper_models_is_noted(tmp_path):
    summary = build_summary(tmp_path / "summary", sweeps=())
    result = render_report(make_params(reference="paper"), summary, tmp_path / "out")
    assert any("none of this study's models" in n for n in result["notes"])
    assert "Columns headed paper" not in (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------- reference data


def _paper_tables(text: str) -> dict[int, list[list[str]]]:
    """The Markdown tables under the 'Table N (' lines of PAPER.md."""
    tables, current, lines = {}, None, text.splitlines()
    for line in lines:
        m = re.match(r"^Table (\d) \(", line)
        if m:
            current = int(m.group(1))
            tables[current] = []
        elif current and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                tables[current].append(cells)
        elif current and tables[current] and not line.strip():
            current = None
    return tables


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="PAPER.md not available")
def test_reference_yaml_matches_paper_md():
    ref = yaml.safe_load(PAPER_YAML.read_text())
    tables = _paper_tables(PAPER_MD.read_text())
    assert set(tables) == {1, 2, 3, 4}
    models = ["llama3", "mistral", "pythia"]
    measures = ref["measures"]
    checked = 0

    head, *rows = tables[1]
    cols = ["MAP", "MRR", "nDCG@10"]
    assert [h.split()[-1] for h in head[1:]] == cols * 3
    for row in rows:
        step = int(row[0])
        for i, cell in enumerate(row[1:]):
            model, measure = models[i // 3], measures[cols[i % 3]]
            assert float(cell) == ref["table1"]["values"][model][step][measure]
            checked += 1
    assert sum(len(v) for m in ref["table1"]["values"].values() for v in m.values()) == 36

    head, *rows = tables[2]
    for row in rows:
        for model, cell in zip(models, row[1:]):
            value, step = re.fullmatch(r"([\d.]+) \((\d+)\)", cell).groups()
            entry = ref["table2"]["values"][model][int(row[0])]
            assert (float(value), int(step)) == (entry["value"], entry["step"])
            checked += 1

    label_to_ablation = {v: k for k, v in ref["table3"]["rows"].items()}
    head, *rows = tables[3]
    assert [h.split()[-1] for h in head[1:]] == ["MRR", "nDCG"] * 3
    for row in rows:
        ablation = label_to_ablation[row[0]]
        for i, cell in enumerate(row[1:]):
            model, measure = models[i // 2], measures[["MRR", "nDCG"][i % 2]]
            assert float(cell) == ref["table3"]["values"][model][ablation][measure]
            checked += 1

    label_to_ablation = {v: k for k, v in ref["table4"]["rows"].items()}
    head, *rows = tables[4]
    assert len(rows) == len(label_to_ablation)
    for row in rows:
        ablation = label_to_ablation[row[0]]
        for model, cell in zip(models, row[1:]):
            assert float(cell) == ref["table4"]["values"][model][ablation]
            checked += 1
    assert checked == 36 + 12 + 24 + 18
    # and nothing in the YAML that PAPER.md does not have
    assert sum(len(m) for m in ref["table2"]["values"].values()) == 12
    assert sum(len(v) for m in ref["table3"]["values"].values() for v in m.values()) == 24
    assert sum(len(m) for m in ref["table4"]["values"].values()) == 18


def test_random_floor_row_when_the_summary_has_it(tmp_path):
    import pyarrow as pa

    from lorascope.core import contracts

    summary = build_summary(tmp_path / "summary")
    table = contracts.read_table(summary / "evaluations.parquet", contracts.EVALUATIONS)
    extra = [_row(sweep="first_stage", ablation="random", split="dl19", measure=m, value=0.25)
             for m in MEASURES]
    extra_table = pa.Table.from_pylist(extra, schema=contracts.EVALUATIONS.schema)
    contracts.write_table(summary / "evaluations.parquet", pa.concat_tables([table, extra_table]),
                          contracts.EVALUATIONS)
    out = tmp_path / "out"
    render_report(make_params(), summary, out)
    _, rows = md_table((out / "report.md").read_text(), "Table 1: ")
    floor = [label for label in rows if label.startswith("Random reordering")]
    assert floor and list(rows)[:2] == ["BM25 (first stage)", floor[0]]
    assert rows[floor[0]] == ["0.2500"] * 6
    _, rows3 = md_table((out / "report.md").read_text(), "Table 3: ")
    assert any(label.startswith("Random reordering") for label in rows3)
    lines = (out / "table1.tex").read_text().splitlines()
    bm25 = next(i for i, line in enumerate(lines) if line.startswith("BM25"))
    assert lines[bm25 + 1].startswith("Random reordering")  # no rule inside the baseline block
    assert lines[bm25 + 2] == r"\midrule"


def test_html_in_labels_is_escaped(tmp_path):
    """A label from the study config is text: report.md shows it, never runs it as HTML."""
    evil = '<img src=x onerror="alert(1)"> Alpha'
    models = {**MODELS, "alpha": {**MODELS["alpha"], "label": evil}}
    summary = build_summary(tmp_path / "summary", models=models)
    render_report(make_params(), summary, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;img src=x onerror=" in md and "<img src=x" not in md
    assert "<img src=x" not in html
