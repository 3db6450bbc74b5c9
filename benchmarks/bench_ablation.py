"""Benchmark: a 16-ablation sweep by in-place LoRA switching vs reload + merge per ablation.

Both methods score the embedded DL19 split (BM25 top-20, 43 queries, 860 pairs) with a tiny
LLaMA (8 layers, width 128, random weights: speed does not depend on what the model knows)
carrying a rank-8 LoRA adapter on all seven roles, under the same 17 settings (``full`` + 16
ablations: ``no_lora``, ``each_layer`` x 8, ``boundary`` x 7).

* in place: load base + adapter once, tokenise once, then per ablation ``switching.zeroed``
  + score (what ``lorascope.evaluate`` does);
* reload + merge: per ablation load base + adapter, zero ``lora_B`` of the ablated modules,
  ``merge_and_unload()``, tokenise, score (what a job-per-ablation pipeline does, minus the
  process start-up of ~4-5 s per job that FACTS.md measured).

Prints one table: the switching overhead (time per ablation outside the forward passes),
the scoring time, and the whole sweep, for each method; and checks both give the same scores.

    python benchmarks/bench_ablation.py [--threads 1] [--ablations 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH_TOKENS = 8192
MAX_LENGTH = 256


def dl19_split(out_dir: Path) -> Path:
    """The embedded DL19 split, BM25 top-20, all judged queries."""
    from lorascope.data.prepare import prepare_split

    prepare_split({"split": {"source": "embedded", "dataset": "dl19", "depth": 20,
                             "queries": None}, "seed": 0}, out_dir)
    return out_dir


def read_split(split_dir: Path):
    from lorascope.data.splits import read_split as read

    return read(split_dir)


def tiny_base(out_dir: Path, texts: list[str], layers: int = 8, width: int = 128) -> Path:
    """A randomly initialised tiny LLaMA base directory with a BPE tokenizer of the texts."""
    from lorascope.models.tiny import build_tiny, train_tokenizer

    tokenizer = train_tokenizer(texts, 8000)
    model = build_tiny("llama", layers, width, 4, 8000, tokenizer, seed=0, max_position=512)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def random_adapter(base_dir: Path, out_dir: Path, rank: int = 8, seed: int = 1) -> Path:
    """A rank-``rank`` LoRA adapter on every role with random A/B (B starts at zero)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer

    from lorascope.core import roles
    from lorascope.models.reranker import load_reranker

    torch.manual_seed(seed)
    model, _, arch = load_reranker(base_dir)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank,
                        target_modules=roles.target_modules(
                            arch, arch.roles, num_layers=roles.num_layers(model.config)),
                        modules_to_save=list(arch.head_modules))
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                module.lora_B["default"].weight.normal_(0.0, 0.05)
    peft_model.save_pretrained(out_dir)
    return out_dir


def sweep(num_layers: int, count: int):
    from lorascope.core.ablation import resolve_sweep
    from lorascope.core.roles import roles_for

    spec = {"ablations": {"no_lora": {"drop": "all"}}, "generate": ["each_layer", "boundary"]}
    ablations = resolve_sweep("bench", spec, num_layers=num_layers,
                              arch_roles=roles_for("llama"))
    return ablations[: count + 1]


class InPlace:
    """Load base + adapter and tokenise once; per ablation switch LoRA layers and score."""

    label = "in place"

    def __init__(self, base_dir, adapter_dir, queries, candidates) -> None:
        from lorascope.models.adapted import load_adapted
        from lorascope.core.scoring import PreparedPairs

        t0 = time.perf_counter()
        self.model, tokenizer, self.arch = load_adapted(base_dir, adapter_dir)
        self.prepared = PreparedPairs.build(tokenizer, self.arch, queries, candidates,
                                            max_length=MAX_LENGTH, batch_tokens=BATCH_TOKENS)
        self.setup = time.perf_counter() - t0

    def run(self, ablation):
        """``(scores, overhead seconds, scoring seconds)`` of one ablation."""
        from lorascope.core import switching

        t1 = time.perf_counter()
        with switching.zeroed(self.model, self.arch, ablation.zeroed):
            t2 = time.perf_counter()
            scores = self.prepared.score(self.model, progress=False)
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        return scores, (t2 - t1) + (t4 - t3), t3 - t2


class ReloadMerge:
    """Per ablation: load base + adapter, zero lora_B, merge_and_unload, tokenise, score."""

    label = "reload + merge"

    def __init__(self, base_dir, adapter_dir, queries, candidates) -> None:
        self.base_dir, self.adapter_dir = base_dir, adapter_dir
        self.queries, self.candidates = queries, candidates
        self.setup = 0.0

    def run(self, ablation):
        import torch
        from peft import PeftModel

        from lorascope.core import switching
        from lorascope.models.reranker import load_reranker
        from lorascope.core.scoring import PreparedPairs

        t1 = time.perf_counter()
        base, tokenizer, arch = load_reranker(self.base_dir)
        model = PeftModel.from_pretrained(base, str(self.adapter_dir))
        table = switching.lora_modules(model, arch)
        with torch.no_grad():
            for key in ablation.zeroed:
                table[key].lora_B["default"].weight.zero_()
        merged = model.merge_and_unload()
        merged.eval()
        prepared = PreparedPairs.build(tokenizer, arch, self.queries, self.candidates,
                                       max_length=MAX_LENGTH, batch_tokens=BATCH_TOKENS)
        t2 = time.perf_counter()
        scores = prepared.score(merged, progress=False)
        return scores, t2 - t1, time.perf_counter() - t2


def run_sweep(methods, ablations):
    """Interleave the methods ablation by ablation, so that load from other processes on a
    shared machine hits both alike."""
    results = {m.label: {"overhead": [], "scoring": [], "runs": {}} for m in methods}
    for ablation in ablations:
        for method in methods:
            scores, overhead, scoring = method.run(ablation)
            r = results[method.label]
            r["runs"][ablation.name] = scores
            r["overhead"].append(overhead)
            r["scoring"].append(scoring)
    for method in methods:
        r = results[method.label]
        r["setup"] = method.setup
        r["total"] = method.setup + sum(r["overhead"]) + sum(r["scoring"])
    return results


def max_diff(a, b) -> float:
    return max(abs(a[name][k] - b[name][k]) for name in a for k in a[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads "
                             "spin-wait for busy cores)")
    parser.add_argument("--ablations", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-ablation-"))
    split = dl19_split(work / "dl19")
    queries, candidates, _ = read_split(split)
    base = tiny_base(work / "base", [t for _, _, t in candidates], args.layers, args.width)
    adapter = random_adapter(base, work / "adapter")
    ablations = sweep(args.layers, args.ablations)
    n = len(ablations)

    a_method = InPlace(base, adapter, queries, candidates)
    b_method = ReloadMerge(base, adapter, queries, candidates)
    results = run_sweep([a_method, b_method], ablations)
    a, b = results["in place"], results["reload + merge"]
    diff = max_diff(a["runs"], b["runs"])

    def row(label, r):
        return (f"| {label:<14} | {r['setup']:7.2f} | {statistics.median(r['overhead']) * 1e3:13.1f} "
                f"| {statistics.median(r['scoring']):13.2f} | {r['total']:7.1f} |")

    print(f"\n{n - 1} ablations + full, {len(candidates)} DL19 pairs each "
          f"(tiny llama {args.layers}x{args.width}, LoRA r=8 on all roles, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f})\n")
    print("| method         | setup s | overhead ms/abl | score s/abl | sweep s |")
    print("|----------------|---------|-----------------|-------------|---------|")
    print(row(a_method.label, a))
    print(row(b_method.label, b))
    over = statistics.median(b["overhead"]) / max(statistics.median(a["overhead"]), 1e-9)
    print(f"\nper-ablation overhead (all but the forward passes): {over:,.0f}x smaller in place")
    print(f"whole sweep: reload + merge / in place = {b['total'] / a['total']:.2f}")
    print(f"forward passes: unmerged LoRA / merged = "
          f"{sum(a['scoring']) / sum(b['scoring']):.2f}")
    print(f"scores: max |in place - merged| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
