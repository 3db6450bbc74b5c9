"""Benchmark: what boundary-layer pruning buys in unmerged scoring throughput.

A boundary-pruned adapter (:func:`lorascope.analyses.boundary.export.export_pruned`) keeps LoRA in layers
``0..b`` only; loaded with peft, the layers above ``b`` run as plain base linears. This script
measures how much faster an unmerged pruned adapter scores than the unmerged full one, with
two bounds: the base model with no adapter (no LoRA work at all) and the full adapter merged
into the weights (the same arithmetic cost as the base).

Everything is built offline in a temporary directory:

* a randomly initialised LLaMA-architecture sequence classifier (``LlamaConfig`` +
  ``LlamaForSequenceClassification``, one output, pad token set) of the chosen ``--size``,
  with a byte-level BPE tokenizer trained on the passages scored (speed does not depend on
  what the model knows);
* a rank-8 LoRA adapter on all seven roles of every layer with random non-zero ``lora_B`` (so
  the update is real) and a random score head as ``modules_to_save``, saved by peft;
* pruned exports of it at a few boundaries ``b`` (default ``L/4-1, L/2-1, 3L/4-1, L-2``).

Then the embedded DL19 split (BM25 top-``--depth`` of all 43 judged queries) is tokenised once
(:class:`lorascope.core.scoring.PreparedPairs`, length-sorted token-budget batches) and scored by
every variant, all loaded side by side: warm-up batches untimed, then ``--repeats`` rounds
with the variants interleaved (the order rotated each round), CUDA synchronised around each
pass, best pass reported. Each pruned adapter's scores are also checked against the in-place
ablation ``keep_layers_0_b`` of the full adapter (``lorascope.core.switching.zeroed``).

    python benchmarks/bench_boundary.py                      # CPU, tiny model, < 1 min
    python benchmarks/bench_boundary.py --size 1b            # GPU: bf16, 16 x 2048, GQA

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("bench_boundary")


@dataclass(frozen=True)
class Size:
    """The shape of the random LLaMA (vocabulary: the trained tokenizer's)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int


SIZES = {
    # CPU default: small enough for a 1-thread run under a minute.
    "tiny": Size(layers=8, hidden=256, intermediate=1024, heads=4, kv_heads=4),
    # The transformer stack of Llama-3.2-1B (GQA 32/8), without its 128k-token embedding.
    "1b": Size(layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8),
    # A deeper 1B-class stack, LLaMA-2's MLP ratio, GQA (TinyLlama-like shape).
    "1b-deep": Size(layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4),
}

ROLES_ALL = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class Variant:
    """One model scored: its label, LoRA extent and best pass."""

    name: str
    b: int | None  # the boundary (L-1 for the full adapter), None without LoRA layers
    lora_params: int
    lora_modules: int
    model: Any = None
    seconds: float = float("inf")
    passes: list[float] | None = None
    max_diff_in_place: float | None = None


# --------------------------------------------------------------------------- building


def dl19_pairs(depth: int) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Queries and top-``depth`` BM25 candidates ``(qid, docid, text)`` of embedded DL19."""
    from lorascope.data.embedded import rerank_split

    queries, candidates, _ = rerank_split("dl19", depth=depth, qids=None)
    query_text = {row["qid"]: row["query"] for row in queries}
    rows = sorted((row["qid"], row["rank"], row["docid"], row["text"]) for row in candidates)
    return query_text, [(qid, docid, text) for qid, _, docid, text in rows]


def build_base(out_dir: Path, size: Size, texts: list[str], *, dtype: str, device: str,
               vocab: int, seed: int) -> Path:
    """A random LLaMA sequence classifier + tokenizer + a minimal ``base_manifest.json``."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from lorascope.core import fileio
    from lorascope.models.base import MANIFEST
    from lorascope.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=False, num_labels=1, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config,
                                                               dtype=getattr(torch, dtype))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # export_pruned reads the depth and the architecture from the base manifest.
    fileio.write_json(out_dir / MANIFEST, {
        "model_type": "llama", "num_layers": size.layers,
        "source": {"kind": "benchmark", "shape": asdict(size), "seed": seed},
        "revision": None, "weights_sha256": None,
    })
    n_params = sum(p.numel() for p in model.parameters())
    log.info("random llama %s: %.3g parameters, vocabulary %d", size, n_params, len(tokenizer))
    del model
    return out_dir


def build_adapter(base_dir: Path, out_dir: Path, *, rank: int, dtype: str, device: str,
                  seed: int) -> Path:
    """Rank-``rank`` LoRA on all roles of all layers, random non-zero ``lora_B``, and a random
    score head (``modules_to_save``), saved as a plain peft adapter."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from lorascope.core import roles
    from lorascope.models.reranker import load_reranker

    model, _, arch = load_reranker(base_dir, dtype=dtype, device=device)
    depth = roles.num_layers(model.config)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank,
                        lora_dropout=0.0,
                        target_modules=roles.target_modules(arch, ROLES_ALL, num_layers=depth),
                        modules_to_save=list(arch.head_modules))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                module.lora_B["default"].weight.normal_(0.0, 0.05)
            elif isinstance(module, ModulesToSaveWrapper):
                for param in module.modules_to_save["default"].parameters():
                    param.normal_(0.0, param.shape[-1] ** -0.5)
    peft_model.save_pretrained(out_dir)
    del peft_model, model
    return out_dir


def boundaries(layers: int, wanted: list[int] | None) -> list[int]:
    """The pruning boundaries: given, or ``L/4-1, L/2-1, 3L/4-1, L-2`` (distinct, < L-1)."""
    if wanted:
        bad = [b for b in wanted if not 0 <= b < layers - 1]
        if bad:
            raise SystemExit(f"--b {bad}: a pruning boundary must be in 0..{layers - 2} "
                             f"(b = {layers - 1} is the full adapter)")
        return sorted(set(wanted), reverse=True)
    picks = {max(0, layers * k // 4 - 1) for k in (1, 2, 3)} | {layers - 2}
    return sorted(picks, reverse=True)


# --------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_variants(variants: list[Variant], prepared: Any, device: str, repeats: int,
                  warmup_batches: int) -> dict[str, dict]:
    """Warm every variant up, then ``repeats`` interleaved rounds; sets each best pass.
    Returns the first timed pass's scores per variant."""
    for v in variants:
        prepared.score(v.model, device=device, progress=False,
                       first_batches=min(warmup_batches, len(prepared.batches)))
        v.passes = []
    _sync(device)
    scores: dict[str, dict] = {}
    for round_ in range(repeats):
        shift = round_ % len(variants)
        for v in variants[shift:] + variants[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            result = prepared.score(v.model, device=device, progress=False)
            _sync(device)
            assert v.passes is not None
            v.passes.append(time.perf_counter() - t0)
            scores.setdefault(v.name, result)
    for v in variants:
        assert v.passes
        v.seconds = min(v.passes)
    return scores


def lora_count(model: Any) -> tuple[int, int]:
    """(LoRA parameters, LoRA layers) of a loaded peft model."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    params = sum(p.numel() for m in layers for n, p in m.named_parameters() if "lora_" in n)
    return params, len(layers)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model shape (default: tiny on CPU, 1b on CUDA)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument("--depth", type=int, default=None,
                        help="BM25 candidates per query (default: 1 on CPU, 20 on CUDA)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="pair length cap (default: 128 on CPU, 256 on CUDA)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="padded-token budget per batch (default: 2048 on CPU, evaluate's "
                             "16384 on CUDA)")
    parser.add_argument("--b", type=int, action="append", default=None,
                        help="a pruning boundary (repeatable; default L/4-1, L/2-1, 3L/4-1, L-2)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-batches", type=int, default=1,
                        help="untimed batches (the longest) per variant before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary to train")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lorascope", "httpx", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    size_name = args.size or ("1b" if device.startswith("cuda") else "tiny")

    with tempfile.TemporaryDirectory(prefix="bench-boundary-") as tmp:
        return run(args, Path(tmp), device, size_name, started)


def run(args: argparse.Namespace, work: Path, device: str, size_name: str,
        started: float) -> int:
    """Build everything under ``work``, time the variants, print (and write) the table."""
    import torch
    import transformers

    from lorascope.analyses.boundary.export import export_pruned
    from lorascope.models.adapted import load_adapted
    from lorascope.models.reranker import load_reranker
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.switching import zeroed

    gpu = device.startswith("cuda")
    size = SIZES[size_name]
    dtype = "bfloat16" if gpu else "float32"
    depth = args.depth or (20 if gpu else 1)
    batch_tokens = args.batch_tokens or (16384 if gpu else 2048)
    max_length = args.max_length or (256 if gpu else 128)
    queries, candidates = dl19_pairs(depth)
    base_dir = build_base(work / "base", size, [t for _, _, t in candidates], dtype=dtype,
                          device=device, vocab=args.vocab, seed=0)
    adapter_dir = build_adapter(base_dir, work / "adapter", rank=args.rank, dtype=dtype,
                                device=device, seed=1)
    bounds = boundaries(size.layers, args.b)
    pruned: dict[int, tuple[Path, dict]] = {}
    for b in bounds:
        manifest = export_pruned(adapter_dir, base_dir, b, work / f"pruned-{b:02d}")
        pruned[b] = (work / f"pruned-{b:02d}", manifest["pruned"])
    log.info("built base, adapter and %d pruned exports in %.1fs", len(bounds),
             time.perf_counter() - started)

    # ---- load every variant side by side (each on its own copy of the base)
    base_model, tokenizer, arch = load_reranker(base_dir, dtype=dtype, device=device)
    full_model, _, _ = load_adapted(base_dir, adapter_dir, dtype=dtype, device=device)
    lora_total, modules_total = lora_count(full_model)
    merged_model, _, _ = load_adapted(base_dir, adapter_dir, dtype=dtype, device=device)
    merged_model = merged_model.merge_and_unload()
    merged_model.eval()
    variants = [
        Variant("base (no adapter)", None, 0, 0, base_model),
        Variant("merged full", None, 0, 0, merged_model),
        Variant("full, unmerged", size.layers - 1, lora_total, modules_total, full_model),
    ]
    for b in bounds:
        model, _, _ = load_adapted(base_dir, pruned[b][0], dtype=dtype, device=device)
        params, modules = lora_count(model)
        if params != pruned[b][1]["params"]["lora_kept"]:
            raise RuntimeError(f"pruned b={b}: {params} LoRA parameters loaded, the export "
                               f"says {pruned[b][1]['params']['lora_kept']}")
        variants.append(Variant(f"pruned 0..{b}, unmerged", b, params, modules, model))

    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=max_length, batch_tokens=batch_tokens)
    scores = time_variants(variants, prepared, device, args.repeats, args.warmup_batches)

    # ---- exactness: each pruned adapter == the in-place ablation keep_layers_0_b of the full
    for v in variants[3:]:
        assert v.b is not None
        dropped = [(int(layer), str(role)) for layer, role in pruned[v.b][1]["modules_dropped"]]
        with zeroed(full_model, arch, dropped):
            ablated = prepared.score(full_model, device=device, progress=False)
        v.max_diff_in_place = max(abs(ablated[k] - scores[v.name][k]) for k in ablated)

    env = {
        "device": torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
        "dtype": dtype, "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": _version("peft"), "python": platform.python_version(),
        "threads": None if gpu else torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print_table(variants, prepared, size_name, size, env, args.rank, args.repeats, max_length)
    if args.json is not None:
        from lorascope.core import fileio

        fileio.write_json(args.json, {
            "size": size_name, "shape": asdict(size), "rank": args.rank,
            "pairs": len(prepared), "real_tokens": prepared.real_tokens,
            "padded_tokens": prepared.padded_tokens, "batches": len(prepared.batches),
            "max_length": max_length, "batch_tokens": prepared.batch_tokens,
            "repeats": args.repeats, "environment": env,
            "variants": [{k: val for k, val in asdict(v).items() if k != "model"}
                         for v in variants],
        })
    log.info("done in %.1fs", time.perf_counter() - started)
    for v in variants:
        v.model = None
    gc.collect()
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def print_table(variants: list[Variant], prepared: Any, size_name: str, size: Size,
                env: dict[str, Any], rank: int, repeats: int, max_length: int) -> None:
    """The Markdown table: per variant LoRA extent, pairs/s and the speed ratios."""
    pairs = len(prepared)
    base, merged, full = variants[0], variants[1], variants[2]
    lengths = prepared.lengths
    print(f"\n{pairs} DL19 pairs, {prepared.real_tokens} tokens (lengths {min(lengths)}-"
          f"{max(lengths)}, max_length {max_length}), {len(prepared.batches)} batches of <= "
          f"{prepared.batch_tokens} padded tokens; random llama '{size_name}' "
          f"({size.layers} x {size.hidden}, MLP {size.intermediate}, heads "
          f"{size.heads}/{size.kv_heads}), LoRA r={rank} on 7 roles; {env['device']}, "
          f"{env['dtype']}, torch {env['torch']}, peft {env['peft']}"
          + (f", {env['threads']} thread(s)" if env["threads"] else "")
          + f"; best of {repeats}, load average {env['load_average']}\n")
    print("| model | LoRA layers | LoRA params kept | pairs/s | vs full unmerged "
          "| vs merged | time over base | max abs diff vs in-place |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        layers = ("-" if v.b is None else f"0..{v.b} ({v.lora_modules} modules)")
        kept = ("-" if v.b is None else f"{100 * v.lora_params / full.lora_params:.1f} %")
        diff = "-" if v.max_diff_in_place is None else f"{v.max_diff_in_place:.1e}"
        print(f"| {v.name} | {layers} | {kept} | {pairs / v.seconds:.1f} | "
              f"{full.seconds / v.seconds:.3f}x | {merged.seconds / v.seconds:.3f}x | "
              f"{100 * (v.seconds / base.seconds - 1):+.1f} % | {diff} |")


if __name__ == "__main__":
    sys.exit(main())
