"""Each workflow rule's config slice: exactly the values its output depends on.

The Snakemake rules pass these (as sorted-key JSON strings) in ``params:``, so Snakemake's
"params changed" trigger reruns a job when, and only when, its own slice changed. Keeping them
here, in one tested place, means the rules never reach into the config themselves.

A slice is a function of the study and the job's wildcards (as keyword arguments, ints for
``step`` and ``rank``); :func:`for_rule` finds the one of a rule, the paper's here and each
analysis's in its ``study`` module (``SLICES``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorascope.analyses.registry import ANALYSES, load
from lorascope.core import variants
from lorascope.core.names import CHECKPOINTS, EACH_LAYER_ROLE
from lorascope.study.plan import adapter_of
from lorascope.study.spec import SPLIT_FILE_KEYS, Study


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a slice."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def train_data(study: Study) -> dict[str, Any]:
    """The training groups: their source, and per training collection the sizes of the
    splits held out of it (those queries leave training)."""
    train = dataclasses.asdict(study.train)
    train["dataset"] = list(study.train.datasets)
    held = {d: sorted(s.queries for s in study.holdout_splits() if s.dataset == d and s.queries)
            for d in study.train.datasets}
    return {"train": train, "seed": study.seed, "holdout_queries": held}


def split_data(study: Study, split: str) -> dict[str, Any]:
    """The split's spec (file keys only where given) and the seed."""
    spec = dataclasses.asdict(study.splits[split])
    spec.pop("name")
    for key in SPLIT_FILE_KEYS:
        if spec[key] is None:
            del spec[key]
    return {"split": spec, "seed": study.seed}


def first_stage(study: Study, split: str) -> dict[str, Any]:
    return {"split": split, "metrics": list(study.metrics)}


def base_model(study: Study, model: str) -> dict[str, Any]:
    """A base model's source (tiny models: their shape and pretraining) and the seed."""
    m = study.models[model]
    return {"model": model, "source": dict(m.source), "seed": study.seed}


def train(study: Study, model: str, adapter: str) -> dict[str, Any]:
    """Everything that shapes one LoRA run (the fields of ``lorascope.training.settings.TrainSettings``)."""
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
            "batch_tokens": t.batch_tokens,
            "base_dropout": t.base_dropout,
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


def import_adapter(study: Study, model: str, adapter: str, step: int) -> dict[str, Any]:
    """An imported adapter: where it comes from and the step it is known by."""
    a = adapter_of(study.models[model], adapter)
    return {"model": model, "adapter": adapter, "step": step, "source": dict(a.source)}


def evaluate(study: Study, model: str, adapter: str, step: int, sweep: str, split: str) -> dict[str, Any]:
    """One evaluation job: which checkpoint, which ablations, how it is scored and tested."""
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
        "scoring": scoring(study, model),
    }


def evaluate_checkpoints(study: Study, model: str, adapter: str, split: str) -> dict[str, Any]:
    """The checkpoint curve of one run on one split: which steps, the measures, the scoring."""
    from lorascope.study.plan import curve_steps

    return {
        "model": model,
        "adapter": adapter,
        "split": split,
        "steps": list(curve_steps(study, model, adapter, split)),
        "metrics": list(study.metrics),
        "scoring": scoring(study, model),
    }


def evaluate_zero_shot(study: Study, model: str, split: str) -> dict[str, Any]:
    """A base model's zero-shot ranking of one split: its method, the measures, the scoring."""
    ev = study.evaluation
    return {
        "model": model,
        "split": split,
        "zero_shot": dict(study.models[model].zero_shot or {}),
        "metrics": list(study.metrics),
        "scoring": {"batch_tokens": ev.batch_tokens, "precision": ev.precision},
    }


def scoring(study: Study, model: str) -> dict[str, Any]:
    """How a scoring job (evaluate, lens, boundary comparison) of ``model`` scores pairs."""
    ev = study.evaluation
    return {
        "batch_tokens": ev.batch_tokens,
        "max_length": study.models[model].training.max_length,
        "precision": ev.precision,
    }


def summarize(study: Study) -> dict[str, Any]:
    """What the study summary reads from the config: the convergence rule and the study's
    description for study.json. (Metrics and significance reach it through the evaluations'
    summaries, which rerun when they change.) Not the config hash: it changes with any
    value, and a report-only change must not rerun the summary. The sweeps' ``compare``
    pairs and the paired test they use: the contrasts are computed here, from the sweeps'
    per-query metrics."""
    return {
        "convergence": dataclasses.asdict(study.evaluation.convergence),
        "contrasts": {s.name: [list(p) for p in s.compare]
                      for s in study.sweeps.values() if s.compare},
        "significance": dataclasses.asdict(study.evaluation.significance),
        "study": {
            "study": study.name,
            "models": {
                m.name: {"label": m.label, "mechanics_only": m.mechanics_only}
                for m in study.models.values()
            },
            "splits": {
                s.name: {"dataset": s.dataset, "depth": s.depth, "queries": s.queries,
                         **({"first_stage": f"run {Path(s.run).name}"} if s.run else {})}
                for s in study.splits.values()
            },
            "adapters": {
                m.name: {
                    a.name: {
                        "rank": a.rank,
                        "targets": a.summary_targets,
                        "variant": variants.label(a.variant),
                        **({"imported": dict(a.source)} if m.is_imported(a.name) else {}),
                    }
                    for a in m.adapters()
                }
                for m in study.models.values()
            },
            "analyses": study.raw.get("analyses") or {},
        },
    }


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


def _first_adapter(study: Study, preferred: str, *, curves: bool = False) -> str:
    adapters = [a for m in study.models.values() for a in m.adapters()]
    names = [a.name for a in adapters if a.curves or not curves] or [a.name for a in adapters]
    return preferred if preferred in names else names[0]


def table1_adapter(study: Study) -> str:
    """The adapter of Table 1's checkpoint curves (``report.table1_adapter``, else r8-all if
    trained with curves, else the first with curves)."""
    return _first_adapter(study, study.raw["report"]["table1_adapter"] or "r8-all", curves=True)


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
    table1 = table1_adapter(study)
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
    name = _generated(study, raw["heatmap_sweep"], EACH_LAYER_ROLE)
    out["heatmap"] = None
    if name is not None and name in study.sweeps:
        sweep = study.sweeps[name]
        adapter = sweep.adapters[0] if sweep.adapters else table1
        out["heatmap"] = {"sweep": name, "adapter": adapter, "measure": ev.convergence.measure}
    for analysis in ANALYSES:  # each analysis's section params, under its name
        section = load(analysis.module("study"), "report_params")(study)
        if section is not None:
            out[analysis.name] = section
    return out


def for_rule(rule: str) -> Callable[..., dict[str, Any]]:
    """The slice function of a rule: the paper's (:data:`SLICES`) or an analysis's."""
    if rule in SLICES:
        return SLICES[rule]
    for analysis in ANALYSES:
        found = load(analysis.module("study"), "SLICES")
        if rule in found:
            return found[rule]
    raise KeyError(f"no config slice for rule {rule!r}")


#: The paper's rules and their slices (the analyses' are in their ``study`` modules).
SLICES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare_train": train_data,
    "prepare_split": split_data,
    "evaluate_first_stage": first_stage,
    "prepare_base": base_model,
    "train_lora": train,
    "extract_adapter": extract,
    "import_adapter": import_adapter,
    "evaluate": evaluate,
    "evaluate_checkpoints": evaluate_checkpoints,
    "evaluate_zero_shot": evaluate_zero_shot,
    "summarize": summarize,
    "report": report,
}
