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
            "use_rslora": t.lora.rslora,
            "use_dora": t.lora.dora,
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
    """What the study summary depends on: the convergence rule and the metric names."""
    return {
        "convergence": dataclasses.asdict(study.evaluation.convergence),
        "metrics": list(study.evaluation.metrics),
        "significance": dataclasses.asdict(study.evaluation.significance),
    }
