"""Each workflow rule's config slice: exactly the values its output depends on.

The Snakemake rules pass these (as sorted-key JSON strings) in ``params:``, so Snakemake's
"params changed" trigger reruns a job when, and only when, its own slice changed. Keeping them
here, in one tested place, means the rules never reach into the config themselves.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lorascope.config import Study


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a slice."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def train_data(study: Study) -> dict[str, Any]:
    return {
        "train": dataclasses.asdict(study.train),
        "seed": study.seed,
        "holdout_queries": sorted(s.queries for s in study.holdout_splits() if s.queries),
    }


def split_data(study: Study, split: str) -> dict[str, Any]:
    spec = dataclasses.asdict(study.splits[split])
    spec.pop("name")
    return {"split": spec, "seed": study.seed}


def first_stage(study: Study, split: str) -> dict[str, Any]:
    return {"split": split, "metrics": list(study.metrics)}


def base_model(study: Study, model: str) -> dict[str, Any]:
    """A base model's source (tiny models: their shape and pretraining) and the seed."""
    m = study.models[model]
    return {"model": model, "source": dict(m.source), "seed": study.seed}


def train(study: Study, model: str, adapter: str) -> dict[str, Any]:
    """Everything that shapes one LoRA run (the fields of ``lorascope.train.TrainSettings``)."""
    from lorascope.plan import adapter_of

    m = study.models[model]
    t = m.training
    a = adapter_of(m, adapter)
    return {
        "model": model,
        "adapter": adapter,
        "settings": {
            "rank": a.rank,
            "targets": list(a.targets) if isinstance(a.targets, tuple) else a.targets,
            "steps": list(t.steps),
            "alpha": t.lora.alpha,
            "dropout": t.lora.dropout,
            **a.train_fields(),
            "lr": t.lr,
            "schedule": t.schedule,
            "decay_steps": t.decay_steps,
            "warmup_steps": t.warmup_steps,
            "queries_per_step": t.queries_per_step,
            "micro_batch_queries": t.micro_batch_queries,
            "group_size": t.group_size,
            "max_length": t.max_length,
            "weight_decay": t.weight_decay,
            "precision": t.precision,
            "gradient_checkpointing": t.gradient_checkpointing,
            "quantize_4bit": t.quantize_4bit,
            "seed": study.seed,
        },
    }


def extract(study: Study, model: str, adapter: str, step: int) -> dict[str, Any]:
    """The checkpoint to extract and the training slice its manifest records."""
    return {**train(study, model, adapter), "step": step}


def evaluate(study: Study, model: str, adapter: str, step: int, sweep: str, split: str) -> dict[str, Any]:
    """One evaluation job: which checkpoint, which ablations, how it is scored and tested."""
    from lorascope.plan import CHECKPOINTS

    spec = {"ablations": {}} if sweep == CHECKPOINTS else study.sweeps[sweep].spec()
    ev = study.evaluation
    return {
        "model": model,
        "adapter": adapter,
        "step": step,
        "sweep": sweep,
        "sweep_spec": spec,
        "split": split,
        "metrics": list(ev.metrics),
        "significance": dataclasses.asdict(ev.significance),
        "scoring": {
            "batch_tokens": ev.batch_tokens,
            "max_length": study.models[model].training.max_length,
        },
    }


def summarize(study: Study) -> dict[str, Any]:
    """What the study summary reads from the config: the convergence rule. (Metrics and
    significance reach it through the evaluations' summaries, which rerun when they change.)"""
    return {"convergence": dataclasses.asdict(study.evaluation.convergence)}


#: Row labels of the paper's Tables 3 and 4, by the ablation names of configs/paper.yaml.
PAPER_LABELS = {
    "no_lora": "No LoRA updates",
    "mlp_only": "MLP updates only",
    "mha_only": "MHA updates only",
    "layers_5_15": "Layers 5 to 15",
    "layers_5_31": "Layers 5 to 31",
    "layers_0_4_16_31": "Layers 0 to 4 and 16 to 31",
    "up_gate": "All layers, up & gate only",
    "layers_0_15": "Layers 0 to 15",
}
MEASURE_LABELS = {"AP(rel=2)": "MAP", "RR(rel=2)": "MRR"}


def _label(name: str) -> str:
    return PAPER_LABELS.get(name, name.replace("_", " "))


def _first_adapter(study: Study, preferred: str) -> str:
    names = [a.name for m in study.models.values() for a in m.training.adapters]
    return preferred if preferred in names else names[0]


def _table(study: Study, raw: dict[str, Any], default_sweeps: list[str], full_label: str, full_first: bool):
    sweeps = raw["sweeps"] if raw["sweeps"] is not None else default_sweeps
    sweeps = [s for s in sweeps if s in study.sweeps]
    if not sweeps:
        return None
    first = study.sweeps[sweeps[0]]
    if raw["rows"]:
        rows = [[name, label] for name, label in raw["rows"].items()]
    else:
        names = list(first.ablations)
        rows = [[n, _label(n)] for n in names]
        rows = [["full", full_label], *rows] if full_first else [*rows, ["full", full_label]]
    adapter = first.adapters[0] if first.adapters else _first_adapter(study, "r8-all")
    return {"sweeps": sweeps, "adapter": adapter, "rows": rows}


def _generated(study: Study, chosen: str | None, kind: str) -> str | None:
    if chosen is not None:
        return chosen
    return next((s.name for s in study.sweeps.values() if s.generate == kind), None)


def report(study: Study) -> dict[str, Any]:
    """The report's resolved presentation settings (what ``lorascope.report`` renders)."""
    raw = study.raw["report"]
    ev = study.evaluation
    conv = ev.convergence.split
    tests = [s for s in study.splits if s != conv]
    main = raw["main_split"] or ("dl19" if "dl19" in tests else (tests or [conv])[0])
    paper_order = ["AP(rel=2)", "RR(rel=2)", "nDCG@10"]  # the paper's column order
    ordered = sorted(ev.metrics, key=lambda m: paper_order.index(m) if m in paper_order else 3)
    measures = [[MEASURE_LABELS.get(m, m), m] for m in ordered]
    table1 = _first_adapter(study, raw["table1_adapter"] or "r8-all")
    out: dict[str, Any] = {
        "study": study.name,
        "reference": study.reference,
        "decimals": raw["decimals"],
        "main_split": main,
        "companion_splits": [s for s in tests if s != main],
        "models": list(study.models),
        "table1": {"adapter": table1, "measures": measures},
        "table2": {"targets": "all", "measure": ev.convergence.measure},
    }
    if main in ev.final_splits:  # the main split has the last checkpoint only: curves elsewhere
        out["curves_split"] = conv
    t3 = _table(study, raw["table3"], ["components"], "Both MLP & MHA", full_first=False)
    if t3:
        t3["measures"] = [m for m in measures if m[1] in ("RR(rel=2)", "nDCG@10")] or measures
    layer_sweeps = sorted(s for s in study.sweeps if s == "layers" or s.startswith("layers_"))
    t4 = _table(study, raw["table4"], layer_sweeps, "All layers", full_first=True)
    if t4:
        t4["measure"] = ev.convergence.measure
    out["table3"], out["table4"] = t3, t4
    for key, kind, extra in (
        ("heatmap", "each_layer_role", {}),
        ("boundary", "boundary", {"selection_split": conv}),
    ):
        name = _generated(study, raw[f"{key}_sweep"], kind)
        if name is None or name not in study.sweeps:
            out[key] = None
            continue
        sweep = study.sweeps[name]
        adapter = sweep.adapters[0] if sweep.adapters else table1
        out[key] = {"sweep": name, "adapter": adapter, "measure": ev.convergence.measure, **extra}
    analyses = study.analyses
    if analyses.lens is not None:
        out["lens"] = {"measure": ev.convergence.measure, "epsilon": ev.convergence.epsilon}
    svd = next((s.name for s in study.sweeps.values() if s.generate == "svd"), None)
    if svd is not None:
        out["compression"] = {"sweep": svd, "measure": ev.convergence.measure}
    return out


# ---- beyond the paper (issue 7): analyses of trained adapters ----


def anatomy(study: Study, model: str, adapter: str) -> dict[str, Any]:
    """LoRA update anatomy of one run: nothing but which run (the maths has no settings)."""
    return {"model": model, "adapter": adapter}


def lens(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The relevance lens of one run on one split: measures, scoring, the readable-from ε."""
    ev = study.evaluation
    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "metrics": list(ev.metrics),
        "scoring": {
            "batch_tokens": ev.batch_tokens,
            "max_length": study.models[model].training.max_length,
        },
        "epsilon": ev.convergence.epsilon,
    }


def prune_boundary(study: Study, model: str, adapter: str, step: int) -> dict[str, Any]:
    """Which boundary sweep chooses b, and by which measure."""
    b = study.analyses.boundary
    assert b is not None, "analyses.boundary is not configured"
    return {"model": model, "adapter": adapter, "step": step, "sweep": b.sweep,
            "split": b.selection_split, "measure": b.measure}


def compare_boundary(study: Study, model: str, adapter: str, step: int, split: str) -> dict[str, Any]:
    """Pruned vs full on a test split: the evaluate slice (metrics, significance, scoring)."""
    from lorascope.summarize import BOUNDARY_SWEEP

    out = evaluate(study, model, adapter, step, study.analyses.boundary.sweep, split)
    del out["sweep_spec"]
    return {**out, "sweep": BOUNDARY_SWEEP}


def export_compressed(study: Study, model: str, adapter: str, step: int, rank: int) -> dict[str, Any]:
    """An SVD-truncated export: which checkpoint and which rank."""
    return {"model": model, "adapter": adapter, "step": step, "rank": rank}
