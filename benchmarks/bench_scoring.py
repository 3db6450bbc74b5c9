"""Benchmark: length-sorted token-budget batching vs a fixed-order batcher.

Scores the embedded DL19 split (BM25 top-20, 860 pairs, max length 256) with a tiny LLaMA
(8 layers, width 128, random weights) three ways, interleaved and repeated:

* ``fixed order``: candidates in split order (query, BM25 rank), ``B`` pairs per batch, each
  batch padded to its longest pair - the naive batcher;
* ``sorted, B pairs``: sorted by length, the same ``B`` pairs per batch (padding removed,
  nothing else changed);
* ``sorted, budget``: what :class:`lorascope.core.scoring.PreparedPairs` does by default - sorted,
  packed to ``B x max_length`` padded tokens per batch (the fixed batcher's worst-case memory).

Prints padded/real tokens, pairs/s (best of the repeats) and the speed-up over the fixed
batcher; checks all three give the same scores.

    python benchmarks/bench_scoring.py [--batch 32] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ablation import MAX_LENGTH, dl19_split, read_split, tiny_base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="pairs per fixed batch (B)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    from lorascope.models.reranker import load_reranker
    from lorascope.core.batches import fixed_batches, plan_batches
    from lorascope.core.scoring import PreparedPairs

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    queries, candidates, _ = read_split(dl19_split(work / "dl19"))
    base = tiny_base(work / "base", [t for _, _, t in candidates], args.layers, args.width)
    torch.manual_seed(0)
    model, tokenizer, arch = load_reranker(base)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=MAX_LENGTH,
                                   batch_tokens=args.batch * MAX_LENGTH)
    lengths = prepared.lengths
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plans = {
        "fixed order": fixed_batches(len(lengths), args.batch),
        "sorted, B pairs": [[order[j] for j in b] for b in fixed_batches(len(order), args.batch)],
        "sorted, budget": plan_batches(lengths, args.batch * MAX_LENGTH),
    }
    best: dict[str, float] = dict.fromkeys(plans, 0.0)
    scores: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, plan in plans.items():
            scores[name] = prepared.score(model, progress=False, batches=plan)
            best[name] = max(best[name], prepared.last_stats.pairs_per_second)
    real = sum(lengths)
    reference = scores["fixed order"]
    print(f"\n{len(lengths)} DL19 pairs, {real} tokens (lengths {min(lengths)}-{max(lengths)}, "
          f"max_length {MAX_LENGTH}); tiny llama {args.layers}x{args.width}, B = {args.batch}, "
          f"{args.threads} thread(s), best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| batcher          | batches | padded/real | pairs/s | speed-up | max |diff| |")
    print("|------------------|---------|-------------|---------|----------|------------|")
    for name, plan in plans.items():
        padded = sum(len(b) * max(lengths[i] for i in b) for b in plan)
        diff = max(abs(scores[name][k] - reference[k]) for k in reference)
        print(f"| {name:<16} | {len(plan):7d} | {padded / real:11.3f} | {best[name]:7.1f} | "
              f"{best[name] / best['fixed order']:7.2f}x | {diff:10.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
