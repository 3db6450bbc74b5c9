"""A trimmed copy of the embedded default study for workflow tests.

The embedded study's seed, data sources and evaluation settings (metrics, significance,
convergence rule), shrunk to what two CPU cores run end to end in about half a minute: one
tiny LLaMA (4 layers, width 32, two pretraining steps), one rank-1 adapter on all modules
checkpointed at steps 1 and 2, four queries per split with a BM25 top-5, and two small sweeps
(a hand-written one on the test split, a generated one on the validation split). Optional
sections of ``config.yaml`` are left out, so the job plan is exactly the one listed in
:data:`JOBS`.

    raw = small_study()                  # a fresh dict each call: change it freely
    path = write_config(raw, tmp / "study.yaml")
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-llama"

#: The test model: small enough that Python/torch start-up dominates every job.
TINY_LLAMA = {
    "architecture": "llama",
    "layers": 4,
    "width": 32,
    "heads": 2,
    "vocab_size": 512,
    "pretrain_steps": 2,
    "pretrain_batch_size": 4,
    "pretrain_seq_len": 32,
}


def evaluate_job(adapter: str, step: int, sweep: str, split: str) -> str:
    """The label of one evaluate job (see :data:`JOBS`)."""
    return f"evaluate[{MODEL}/{adapter}/{step}/{sweep}/{split}]"


def curve_job(adapter: str, split: str) -> str:
    """The label of one checkpoint-curve job (every checkpoint of an adapter on a split)."""
    return f"evaluate_checkpoints[{MODEL}/{adapter}/{split}]"


#: Every job of the small study, labelled ``rule[wildcard values but the study]``.
JOBS = frozenset(
    {
        "prepare_train",
        "prepare_split[validation]",
        "prepare_split[dl19]",
        "evaluate_first_stage[validation]",
        "evaluate_first_stage[dl19]",
        f"prepare_base[{MODEL}]",
        f"train_lora[{MODEL}/r1-all]",
        f"extract_adapter[{MODEL}/r1-all/1]",
        f"extract_adapter[{MODEL}/r1-all/2]",
        curve_job("r1-all", "validation"),
        evaluate_job("r1-all", 2, "components", "dl19"),
        evaluate_job("r1-all", 2, "per_layer", "validation"),
        "summarize",
        "report",
        "all",
    }
)


def small_study(name: str = "small") -> dict[str, Any]:
    """The trimmed study config (a new dict on every call)."""
    embedded = yaml.safe_load((REPO / "config.yaml").read_text())
    train = {**embedded["data"]["train"], "group_size": 4, "max_queries": 8}
    evaluation = {**embedded["evaluation"], "splits": ["validation"], "final_splits": []}
    training = {
        **embedded["training"],
        "adapters": [{"targets": "all", "ranks": [1]}],
        "steps": [1, 2],
        "queries_per_step": 2,
        "micro_batch_queries": 2,
        "max_length": 32,
    }
    raw = {
        "study": name,
        "seed": embedded["seed"],
        "data": {
            "train": train,
            "splits": {
                "validation": {"source": "embedded", "dataset": "dl21", "queries": 4, "depth": 5},
                "dl19": {"source": "embedded", "dataset": "dl19", "queries": 4, "depth": 5},
            },
        },
        "evaluation": evaluation,
        "models": {
            MODEL: {"label": "tiny LLaMA", "mechanics_only": True, "tiny": dict(TINY_LLAMA)}
        },
        "training": training,
        "sweeps": {
            "components": {
                "adapters": ["r1-all"],
                "splits": ["dl19"],
                "ablations": {
                    "no_lora": {"drop": "all"},
                    "mlp_only": {"keep": {"component": "mlp"}},
                },
            },
            "per_layer": {"splits": ["validation"], "generate": "each_layer"},
        },
        "report": {"decimals": 4},
    }
    return copy.deepcopy(raw)


#: The analysis jobs :func:`with_rerun_analyses` adds (labelled like :data:`JOBS`).
RERUN_ANALYSIS_JOBS = frozenset(
    {
        evaluate_job("r1-all", 2, "boundary", "validation"),
        f"prune_boundary[{MODEL}/r1-all/2]",
        f"compare_boundary[{MODEL}/r1-all/2/dl19]",
        f"lens[{MODEL}/r1-all/validation]",
    }
)


def with_rerun_analyses(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus the cheapest study that runs an analysis of each kind of dependency: a
    boundary sweep on the validation split with pruning compared on dl19 (it reads evaluate's
    outputs) and the relevance lens on validation (it reads the checkpoints only). Adds exactly
    :data:`RERUN_ANALYSIS_JOBS`."""
    raw = copy.deepcopy(raw)
    raw["sweeps"]["boundary"] = {"adapters": ["r1-all"], "splits": ["validation"],
                                 "generate": "boundary"}
    raw["analyses"] = {
        "boundary": {"sweep": "boundary", "splits": ["dl19"]},
        "lens": {"adapters": ["r1-all"], "splits": ["validation"]},
    }
    return raw


def with_analyses(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus every stage beyond the paper: a rank-4 adapter with an SVD compression
    sweep, a boundary sweep with pruning, the relevance lens, the causal analyses (patching,
    probes, head ablation) and the update anatomy."""
    raw = copy.deepcopy(raw)
    raw["training"]["adapters"] = [{"targets": "all", "ranks": [1, 4]}]
    raw["sweeps"]["boundary"] = {"adapters": ["r4-all"], "splits": ["validation"],
                                 "generate": "boundary"}
    raw["sweeps"]["compression"] = {"adapters": ["r4-all"], "splits": ["dl19"],
                                    "generate": "svd", "ranks": [2, 1]}
    raw["analyses"] = {
        "boundary": {"sweep": "boundary", "splits": ["dl19"]},
        "lens": {"adapters": ["r4-all"], "splits": ["validation"]},
        "patching": {"adapters": ["r4-all"], "splits": ["dl19"], "queries": 2, "depth": 3},
        "probing": {"adapters": ["r4-all"], "splits": ["dl19"], "folds": 2, "inner_folds": 2},
        "heads": {"adapters": ["r4-all"], "splits": ["dl19"], "steps": [1, "last"],
                  "mode": "mean"},
        "anatomy": {},
    }
    return raw


def write_config(raw: dict[str, Any], path: Path) -> Path:
    """Write a study config as YAML; returns ``path``."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
