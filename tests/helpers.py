"""Builders shared by the tests: toy passages, queries and training groups, tiny base models
(LLaMA, GPT-NeoX, BERT) and random LoRA adapters on them, reference models for exactness
checks, and state comparisons. The fixtures that use them are in ``conftest.py``."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lorascope.core import contracts, roles

if TYPE_CHECKING:
    import torch

WORDS = ["apple", "river", "stone", "cloud", "tiger", "music", "paper", "glass", "green", "quiet", "north", "silver", "engine", "garden", "winter", "doctor", "market", "castle", "forest", "planet", "yellow", "bridge", "candle", "rocket"]


def passages(n: int, seed: int = 0, low: int = 3, high: int = 40) -> list[str]:
    """Random word passages of varied length."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + "."
            for _ in range(n)]


def toy_pairs(n_queries: int = 4, per_query: int = 6, seed: int = 0
              ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Queries and candidates ``(qid, docid, text)`` of varied length."""
    rng = random.Random(seed)
    queries = {f"q{i}": " ".join(rng.sample(WORDS, 2)) for i in range(n_queries)}
    texts = passages(n_queries * per_query, seed=seed + 1)
    candidates = [(f"q{i}", f"d{i}-{j}", texts[i * per_query + j])
                  for i in range(n_queries) for j in range(per_query)]
    return queries, candidates


def write_toy_split(out_dir: Path, n_queries: int = 5, per_query: int = 8, seed: int = 4
                    ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """A reranking split of :func:`toy_pairs` on disk (first-stage ranks in order, seeded
    graded judgements); returns its queries and candidates."""
    from lorascope.data.common import write_split

    queries, candidates = toy_pairs(n_queries=n_queries, per_query=per_query, seed=seed)
    rng = random.Random(0)
    write_split(
        out_dir,
        [{"qid": q, "query": t} for q, t in queries.items()],
        [{"qid": q, "docid": d, "rank": i % per_query + 1,
          "first_stage_score": 10.0 - i % per_query, "text": t}
         for i, (q, d, t) in enumerate(candidates)],
        [{"qid": q, "docid": d, "relevance": rng.choice([0, 0, 1, 2, 3])}
         for q, d, _ in candidates],
        {"test": True},
    )
    return queries, candidates


def bert_tokenizer(texts: Iterable[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def build_base(out_dir: Path, model_type: str, layers: int = 3, width: int = 32) -> Path:
    """A randomly initialised tiny base model directory (model + tokenizer), like prepare_base."""
    import torch

    texts = passages(300, seed=7)
    if model_type == "bert":
        from transformers import BertConfig, BertModel

        tokenizer = bert_tokenizer(texts)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=width,
                            num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=2 * width, max_position_embeddings=256,
                            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = BertModel(config)
    else:
        from lorascope.models.tiny import build_tiny, train_tokenizer

        tokenizer = train_tokenizer(texts, 300)
        model = build_tiny(model_type, layers, width, 4, 300, tokenizer, seed=0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    targets: str | list[str] = "all",
    use_dora: bool = False,
    use_rslora: bool = False,
    seed: int = 1,
) -> Path:
    """A LoRA adapter (r=4) on ``targets`` with random A, B, DoRA magnitudes and head, saved.

    peft initialises ``lora_B`` to zero (LoRA starts as the identity); random values stand in
    for training so that every ablation changes the scores.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from lorascope.models.reranker import load_reranker

    torch.manual_seed(seed)
    model, _, arch = load_reranker(base_dir)
    target_roles = roles.resolve_targets(arch, targets)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
        target_modules=roles.target_modules(arch, target_roles,
                                            num_layers=roles.num_layers(model.config)),
        modules_to_save=list(arch.head_modules), use_dora=use_dora, use_rslora=use_rslora,
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for name in ("default",):
                    for w in (module.lora_A[name].weight, module.lora_B[name].weight):
                        w.copy_(torch.randn(w.shape, generator=generator) * 0.2)
                    if use_dora:
                        m = module.lora_magnitude_vector[name].weight
                        m.mul_(1 + 0.3 * torch.rand(m.shape, generator=generator))
            elif isinstance(module, ModulesToSaveWrapper):
                for p in module.modules_to_save["default"].parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(out_dir)
    return out_dir


def stamp_checkpoint(checkpoint_dir: Path, base_dir: Path, step: int) -> Path:
    """Make a hand-built adapter a checkpoint extraction accepts: a ``checkpoint.json`` whose
    run fingerprint names the prepared base's weights (as training writes it)."""
    import json

    from lorascope.core.adapters import base_manifest

    fingerprint = {"base_weights_sha256": base_manifest(base_dir)["weights_sha256"],
                   "settings": None, "train_groups": None, "code": None}
    (checkpoint_dir / "checkpoint.json").write_text(
        json.dumps({"step": step, "fingerprint": fingerprint}))
    return checkpoint_dir


def load_adapted(base_dir: Path, adapter_dir: Path, dtype: str = "float32"):
    """Base + adapter through the evaluate stage's loader: ``(model, tokenizer, arch)``."""
    from lorascope.models.adapted import load_adapted as load

    return load(base_dir, adapter_dir, dtype=dtype)


def reference_model(base_dir: Path, adapter_dir: Path, zeroed: Collection[tuple[int, str]],
                    dtype: str = "float32"):
    """A fresh load whose ``zeroed`` LoRA updates are removed from the weights themselves:
    ``lora_B = 0``; a DoRA layer (which rescales ``W`` even with ``lora_B = 0``) is replaced
    by its base layer, the state without any update. (Resetting DoRA's magnitude to the base
    weight's column norms instead is exact in fp32 only: a bf16 magnitude cannot hold the
    norms, and the ratio of the two is then not exactly 1.)"""
    import torch

    from lorascope.core.switching import lora_modules

    model, _, arch = load_adapted(base_dir, adapter_dir, dtype)
    table = lora_modules(model, arch)
    names = {id(module): name for name, module in model.named_modules()}
    with torch.no_grad():
        for key in zeroed:
            layer = table[key]
            if layer.use_dora.get("default"):
                parent_name, _, child = names[id(layer)].rpartition(".")
                setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
            else:
                layer.lora_B["default"].weight.zero_()
    return model


def prepare(tokenizer, arch, seed: int = 0, batch_tokens: int = 256):
    from lorascope.core.scoring import PreparedPairs

    queries, candidates = toy_pairs(seed=seed)
    return PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                               batch_tokens=batch_tokens)


def as_tensor(scores: dict) -> torch.Tensor:
    import torch

    return torch.tensor([scores[k] for k in sorted(scores)], dtype=torch.float64)


def model_state(model) -> dict:
    """Everything switching could disturb: weights, grad flags, enable flags, active adapters."""
    from peft.tuners.lora import LoraLayer

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    flags = {n: (m.disable_adapters, m.active_adapter, m.merged)
             for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    return {"weights": weights, "grads": grads, "flags": flags}


def assert_same_state(a: dict, b: dict) -> None:
    import torch

    assert a["grads"] == b["grads"]
    assert a["flags"] == b["flags"]
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


def toy_groups(n: int, negatives: int = 3, seed: int = 1) -> dict[str, list]:
    """A learnable toy task: the positive contains the query's words and is written in the
    first half of the vocabulary; negatives use only the second half."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows: dict[str, list] = {c: [] for c in contracts.TRAIN_GROUPS.columns}
    for i in range(n):
        query = rng.sample(WORDS[:half], 2)
        pos = [rng.choice(WORDS[:half]) for _ in range(10)]
        for word in query:
            pos.insert(rng.randrange(len(pos) + 1), word)
        rows["qid"].append(f"q{i}")
        rows["query"].append(" ".join(query))
        rows["pos_docid"].append(f"d{i}")
        rows["pos_text"].append(" ".join(pos))
        rows["neg_docids"].append([f"d{i}-{j}" for j in range(negatives)])
        rows["neg_texts"].append(
            [" ".join(rng.choice(WORDS[half:]) for _ in range(12)) for _ in range(negatives)]
        )
    return rows


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


class OomAbove:
    """A model wrapper that raises CUDA's OOM error for batches above ``limit`` tokens."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.calls = model, limit, 0
        self.config, self.training = model.config, False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, **batch):
        import torch

        self.calls += 1
        if batch["input_ids"].numel() > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(**batch)


# --------------------------------------------------------------------------- TREC runs, checked
# independently of lorascope: a plain parser, trec_eval's measures in plain Python, and
# pytrec_eval (trec_eval's own C code) called directly, not through ir_measures.

#: The measures lorascope reports, by ir_measures name, with their trec_eval names.
TREC_EVAL_NAMES = {"nDCG@10": "ndcg_cut_10", "RR(rel=2)": "recip_rank", "AP(rel=2)": "map"}


def parse_trec_run(path: Path) -> tuple[dict[str, dict[str, float]], list[list[str]]]:
    """A run file as ``{qid: {docid: score}}`` and its lines' fields, with a plain split
    (6 fields, ``Q0``): no lorascope code involved."""
    run: dict[str, dict[str, float]] = {}
    lines = [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    for fields in lines:
        assert len(fields) == 6 and fields[1] == "Q0", fields
        assert fields[2] not in run.get(fields[0], {}), f"duplicate {fields[:3]}"
        run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
    return run, lines


def split_qrels(split_dir: Path) -> dict[str, dict[str, int]]:
    """A split's judgements as ``{qid: {docid: relevance}}``."""
    import pyarrow.parquet as pq

    qrels: dict[str, dict[str, int]] = {}
    for row in pq.read_table(Path(split_dir) / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["docid"]] = int(row["relevance"])
    return qrels


def reference_trec_eval(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
                        ) -> dict[str, dict[str, float]]:
    """nDCG@10, RR(rel=2) and AP(rel=2) per judged query by trec_eval's definitions, in plain
    Python: documents in order of score descending, ties by docid descending; nDCG: gain = the
    grade, discount log2(rank + 1), ideal from every judged document of the query; RR and AP
    count grade >= 2 as relevant, AP divides by every relevant judged document; a judged
    query the run does not rank scores 0 (``trec_eval -c``)."""
    import math

    out: dict[str, dict[str, float]] = {name: {} for name in TREC_EVAL_NAMES}
    for qid, judged in qrels.items():
        ranked = [d for d, _ in sorted(run.get(qid, {}).items(),
                                       key=lambda hit: (hit[1], hit[0]), reverse=True)]
        dcg = 0.0
        for i, docid in enumerate(ranked[:10]):
            if judged.get(docid, 0) > 0:
                dcg += judged[docid] / math.log2(i + 2)
        ideal = 0.0
        for i, grade in enumerate(sorted((g for g in judged.values() if g > 0),
                                         reverse=True)[:10]):
            ideal += grade / math.log2(i + 2)
        rr, found, precisions = 0.0, 0, 0.0
        for i, docid in enumerate(ranked):
            if judged.get(docid, 0) >= 2:
                found += 1
                precisions += found / (i + 1)
                rr = rr or 1.0 / (i + 1)
        relevant = sum(1 for g in judged.values() if g >= 2)
        out["nDCG@10"][qid] = dcg / ideal if ideal > 0 else 0.0
        out["RR(rel=2)"][qid] = rr
        out["AP(rel=2)"][qid] = precisions / relevant if relevant else 0.0
    return out


def pytrec_eval_measures(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
                         ) -> dict[str, dict[str, float]]:
    """The same measures from pytrec_eval directly (nDCG at relevance level 1, RR and AP at
    2), judged queries the run does not rank filled with 0."""
    import pytrec_eval

    graded = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    binary = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map"},
                                            relevance_level=2).evaluate(run)
    out: dict[str, dict[str, float]] = {name: {} for name in TREC_EVAL_NAMES}
    for qid in qrels:
        for name, trec_name in TREC_EVAL_NAMES.items():
            source = graded if trec_name == "ndcg_cut_10" else binary
            out[name][qid] = float(source.get(qid, {}).get(trec_name, 0.0))
    return out


def check_run_file(path: Path, tag: str, qrels: dict[str, dict[str, int]],
                   reported: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Check one exported run: every line tagged ``tag``, lines in trec_eval's order with ranks
    1, 2, ... per query, and the reference and pytrec_eval per-query values of the measures in
    ``reported`` ({measure: {qid: value}}, every judged query) equal to them bitwise (the
    reference sums in trec_eval's order, so it is exact too). Returns the run."""
    run, lines = parse_trec_run(path)
    assert {fields[5] for fields in lines} == {tag}
    by_query: dict[str, list[list[str]]] = {}
    for fields in lines:
        by_query.setdefault(fields[0], []).append(fields)
    assert list(by_query) == sorted(by_query)
    for qid, rows in by_query.items():
        assert [int(r[3]) for r in rows] == list(range(1, len(rows) + 1))
        order = sorted(((r[2], float(r[4])) for r in rows), key=lambda h: (h[1], h[0]),
                       reverse=True)
        assert [r[2] for r in rows] == [d for d, _ in order], qid
    for how, values in (("reference", reference_trec_eval(qrels, run)),
                        ("pytrec_eval", pytrec_eval_measures(qrels, run))):
        for measure, by_query_value in reported.items():
            assert set(by_query_value) == set(qrels), (path, measure)
            differ = {q: (values[measure][q], v) for q, v in by_query_value.items()
                      if values[measure][q] != v}
            assert not differ, (path, how, measure, differ)
    return run


def train_plain_peft(base_dir: Path, out_dir: Path, *, steps: int = 3,
                     targets: tuple[str, ...] = ("query", "value", "intermediate.dense"),
                     rank: int = 2, seed: int = 0) -> Path:
    """A LoRA reranker trained the way a user outside lorascope would: transformers' sequence
    classifier, peft's LoraConfig with the head in modules_to_save, a few AdamW steps of a
    pointwise loss on toy pairs, ``save_pretrained``."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=4, lora_dropout=0.0,
                        target_modules=list(targets), modules_to_save=["classifier"])
    model = get_peft_model(model, config)
    queries, candidates = toy_pairs(n_queries=3, per_query=4)
    labels = torch.tensor([float(i % 2) for i in range(len(candidates))])
    batch = tokenizer([queries[q] for q, _, _ in candidates], [t for _, _, t in candidates],
                      padding=True, truncation=True, max_length=64, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(**batch).logits.squeeze(-1), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


def _overlap(query: str, text: str) -> int:
    words = set(text.lower().split())
    return sum(w in words for w in query.lower().split())


def write_own_files(root: Path, queries_n: int = 6, run_depth: int = 30) -> dict:
    """DL20 as a user's files: a run of a term-overlap ranker (its lines shuffled), topics as
    TSV, qrels, and the candidates' passages as JSONL (with an unjudged extra query in the
    run and an extra passage in the collection), written into ``root``."""
    import json
    import random

    from lorascope.data import embedded

    root.mkdir(parents=True, exist_ok=True)
    queries = {r["qid"]: r["query"] for r in embedded.load("dl20", "queries").to_pylist()}
    chosen = sorted(queries)[:queries_n]
    cands = [c for c in embedded.load("dl20", "candidates").to_pylist()
             if c["qid"] in chosen and c["rank"] <= run_depth]
    qrels = [r for r in embedded.load("dl20", "qrels").to_pylist() if r["qid"] in chosen]
    scores = {(c["qid"], c["docid"]): _overlap(queries[c["qid"]], c["text"]) + c["rank"] / 1000
              for c in cands}  # distinct: ties in overlap go to the deeper BM25 rank
    lines = [f"{q} Q0 {d} 0 {s!r} overlap\n" for (q, d), s in scores.items()]
    lines.append("unjudged Q0 extra 1 9.0 overlap\n")
    random.Random(5).shuffle(lines)
    (root / "run.trec").write_text("".join(lines))
    (root / "topics.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in chosen)
                                     + "unjudged\tan unjudged query\n")
    (root / "qrels.txt").write_text("".join(f"{r['qid']} 0 {r['docid']} {r['relevance']}\n"
                                            for r in qrels))
    texts = {c["docid"]: c["text"] for c in cands}
    texts["extra"] = "a passage nobody judged"
    with (root / "collection.jsonl").open("w") as out:
        for docid, text in texts.items():
            out.write(json.dumps({"_id": docid, "title": "", "text": text}) + "\n")
    return {"root": root, "scores": scores, "texts": texts, "qrels": qrels, "queries": chosen}


# --- a fake BEIR dataset (beir/scifact) for ir_datasets, and a run over it

BEIR_DOCS = {f"d{i}": (f"title {i}", f"scientific claim number {i}") for i in range(12)}
BEIR_QUERIES = {"1": "claim one", "2": "claim two", "3": "claim three (judged, not in the run)"}
BEIR_QRELS = [("1", "d1", 1), ("1", "d4", 1), ("2", "d2", 1), ("3", "d3", 1)]
BEIR_RUN = [("1", f"d{i}", 10.0 - i) for i in range(8)] + [("2", f"d{i}", float(i)) for i in range(8)]


def write_beir_run(path: Path) -> Path:
    """A BM25-like run over the fake BEIR corpus (``BEIR_RUN``) as a TREC run file."""
    path.write_text("".join(f"{q} Q0 {d} 0 {s} bm25\n" for q, d, s in BEIR_RUN))
    return path


def build_fake_beir(home: Path) -> Path:
    """Pre-place ``beir/scifact`` as ir_datasets would have downloaded it: the source zip
    (``scifact/corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) at its cache path. BEIR
    has no scoreddocs: the first stage comes from a run file."""
    import json
    import zipfile

    base = home / "beir" / "scifact"
    base.mkdir(parents=True)
    (base / "irds_version.txt").write_text("v2")
    with zipfile.ZipFile(base / "source.zip", "w") as zf:
        zf.writestr("scifact/corpus.jsonl", "".join(
            json.dumps({"_id": d, "title": t, "text": x, "metadata": {}}) + "\n"
            for d, (t, x) in BEIR_DOCS.items()))
        zf.writestr("scifact/queries.jsonl", "".join(
            json.dumps({"_id": q, "text": t, "metadata": {}}) + "\n" for q, t in BEIR_QUERIES.items()))
        zf.writestr("scifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{r}\n" for q, d, r in BEIR_QRELS))
    return home
