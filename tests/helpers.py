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
