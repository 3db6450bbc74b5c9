"""Tiny decoder models built from scratch: tokenizer, architecture, causal-LM pretraining.

LoRA on a randomly initialised base learns nothing useful (FACTS.md), so a tiny base first
learns the study's own passages as a causal language model. That brief pretraining is what
makes a tiny model a (very small) stand-in for a pretrained LLM in the pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

TINY_ARCHITECTURES = ("llama", "mistral", "gpt_neox")
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``.

    Special tokens ``<unk> <s> </s> <pad>`` get ids 0-3; pad differs from EOS so that the
    last-non-pad-token pooling of sequence classification never confuses the two. Encoding
    with special tokens prepends BOS (like LLaMA's tokenizer) and appends nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [UNK, BOS, EOS, PAD]
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_nonempty(texts), trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    tokenizer.padding_side = "right"
    log.info("trained a BPE tokenizer: %d tokens (asked for %d)", len(tokenizer), vocab_size)
    return tokenizer


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def build_tiny(
    architecture: str,
    layers: int,
    width: int,
    heads: int,
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    max_position: int = 256,
) -> PreTrainedModel:
    """A freshly initialised causal LM of the given shape (fp32, CPU).

    The embedding has ``max(vocab_size, len(tokenizer))`` rows; the MLP is 4x the width.
    Mistral gets grouped-query attention (half as many key/value heads) so that its ``k``/``v``
    projections differ in shape from ``q``, as in the real model.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, MistralConfig

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(
            f"tiny architecture {architecture!r} is not supported; use one of "
            f"{', '.join(TINY_ARCHITECTURES)}"
        )
    if width % heads:
        raise ValueError(f"tiny model width {width} is not divisible by heads {heads}")
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    common: dict[str, Any] = {
        "vocab_size": max(vocab_size, len(tokenizer)),
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "max_position_embeddings": max_position,
        "tie_word_embeddings": True,
        **special,
    }
    if architecture == "llama":
        config = LlamaConfig(num_key_value_heads=heads, **common)
    elif architecture == "mistral":
        kv_heads = heads // 2 if heads % 2 == 0 else heads
        config = MistralConfig(num_key_value_heads=kv_heads, sliding_window=None, **common)
    else:
        config = GPTNeoXConfig(use_parallel_residual=True, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "built tiny %s: %d layers x %d wide, %d parameters", architecture, layers, width, n_params
    )
    return model


def _pack(
    tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], seq_len: int, max_tokens: int
) -> torch.Tensor:
    """Texts tokenized as ``<s> text </s>`` and packed into rows of ``seq_len`` tokens."""
    import torch

    ids: list[int] = []
    chunk: list[str] = []

    def flush() -> None:
        for row in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids.extend([tokenizer.bos_token_id, *row, tokenizer.eos_token_id])
        chunk.clear()

    for text in _nonempty(texts):
        chunk.append(text)
        if len(chunk) == 512:
            flush()
            if len(ids) >= max_tokens:
                break
    if chunk:
        flush()
    rows = len(ids) // seq_len
    if rows < 2:
        raise ValueError(
            f"too little text to pretrain on: {len(ids)} tokens for sequences of {seq_len}"
        )
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _eval_loss(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = blocks[i : i + batch_size]
            out = model(input_ids=batch, labels=batch)
            total += out.loss.item() * len(batch)
            count += len(batch)
    model.train()
    return total / count


def pretrain_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Iterable[str],
    steps: int,
    lr: float,
    batch_size: int,
    seq_len: int,
    seed: int,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Full-parameter causal-LM pretraining on ``texts``, in place.

    Texts are packed into ``seq_len``-token blocks; about 5% of the blocks (at most 64) are
    held out for perplexity. AdamW (weight decay 0.01, gradient clipping 1.0), 10% linear
    warmup then cosine decay. Only as much text is tokenized as the steps can use.

    Returns:
        ``steps, first_loss, last_loss`` (mean of the last 10 steps), ``val_loss_before``,
        ``val_loss``, ``val_perplexity``, ``train_blocks``, ``val_blocks``, ``seconds``.
    """
    import torch
    from tqdm.auto import tqdm

    started = time.perf_counter()
    max_tokens = int(1.1 * max(steps, 1) * batch_size * seq_len) + 64 * seq_len
    blocks = _pack(tokenizer, texts, seq_len, max_tokens)
    n_val = min(64, max(1, len(blocks) // 20))
    val, train = blocks[:n_val], blocks[n_val:]
    batch_size = min(batch_size, len(train))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    val_before = _eval_loss(model, val, batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    losses: list[float] = []
    order = torch.randperm(len(train), generator=generator)
    cursor = 0
    bar = tqdm(range(steps), desc="pretrain", disable=not progress, unit="step")
    for _ in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=generator), 0
        batch = train[order[cursor : cursor + batch_size]]
        cursor += batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    val_loss = _eval_loss(model, val, batch_size) if steps else val_before
    stats = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "first_loss": losses[0] if losses else None,
        "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "val_loss_before": val_before,
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 50.0)),
        "train_blocks": len(train),
        "val_blocks": n_val,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "pretrained %d steps in %.1fs: loss %.3f -> %.3f, val perplexity %.1f -> %.1f",
        steps,
        stats["seconds"],
        stats["first_loss"] or float("nan"),
        stats["last_loss"] or float("nan"),
        math.exp(min(val_before, 50.0)),
        stats["val_perplexity"],
    )
    return stats
