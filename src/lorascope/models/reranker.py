"""A prepared base model loaded as a pointwise reranker, and the reranker's input encoding.

The reranker is ``AutoModelForSequenceClassification`` with one output. Its score is
``logits[:, 0]``: Hugging Face's decoder classifiers read the hidden state of the last non-pad
token, BERT's reads the pooled ``[CLS]``. For the decoder reading to be right, every model needs
``config.pad_token_id`` equal to the tokenizer's pad token (RECIPE.md); :func:`fix_pad_token`
makes sure of that for every model, whatever its tokenizer ships with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core.roles import ArchitectureRoles, roles_for

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: Weights dtypes a reranker can be loaded in.
DTYPES = ("float32", "bfloat16", "float16")
#: Tokens per (query, passage) pair unless a study says otherwise (RECIPE.md: 196).
MAX_LENGTH = 196


def fix_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a pad token one: its unk token if distinct from EOS, else EOS.

    This is Tevatron's choice (LLaMA-2: unk; LLaMA-3 / SmolLM2: EOS). As no EOS is appended
    to reranker inputs, a pad equal to EOS still marks only padding.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token != tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        raise ValueError("the tokenizer has no pad, unk or eos token to pad with")
    log.info("tokenizer had no pad token; using %r", tokenizer.pad_token)


def default_device() -> str:
    """``cuda:0`` when a GPU is visible (the one the job was given), else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_reranker(
    base_dir: str | Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    quantize_4bit: bool = False,
    attention: str | None = None,
    dropout: float | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ArchitectureRoles]:
    """Load a prepared base directory as a one-output sequence classifier.

    The score head (and nothing else) is newly initialised from torch's global RNG: seed it
    first for a reproducible head.

    Args:
        base_dir: a directory written by :func:`lorascope.models.base.prepare_base` (or any
            Hugging Face model directory).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the weights.
        device: a torch device string.
        quantize_4bit: load the base weights as 4-bit NF4 through bitsandbytes (CUDA only).
        attention: transformers' ``attn_implementation`` (``eager``, ``sdpa``); None: its
            default.
        dropout: every dropout probability of the model's config (hidden, attention,
            classifier) set to this (it only acts in training); None: the model's own.

    Returns:
        ``(model, tokenizer, arch)`` with ``model.config.pad_token_id`` set to the tokenizer's
        pad token id; the model is in eval mode.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    base_dir = Path(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    fix_pad_token(tokenizer)
    # Right padding everywhere: decoder position ids then do not depend on the other pairs
    # of a batch, so training and scoring see each pair the same way.
    tokenizer.padding_side = "right"
    config = AutoConfig.from_pretrained(base_dir, num_labels=1,
                                        pad_token_id=tokenizer.pad_token_id)
    arch = roles_for(config.model_type)
    if dropout is not None:
        set_dropout(config, dropout)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if quantize_4bit:
        kwargs.update(_four_bit_kwargs(device, torch_dtype))
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not quantize_4bit:
        model.to(device)
    model.eval()
    return model, tokenizer, arch


def set_dropout(config: Any, probability: float) -> list[str]:
    """Set every dropout probability of a transformers config (``hidden_dropout_prob``,
    ``attention_probs_dropout_prob``, ``classifier_dropout``, ``attention_dropout``,
    ``hidden_dropout``, ...: the float fields whose name says dropout); returns their names."""
    names = [name for name, value in vars(config).items()
             if ("dropout" in name or name.endswith("_pdrop"))
             and isinstance(value, (int, float)) and not isinstance(value, bool)]
    for name in names:
        setattr(config, name, probability)
    if getattr(config, "classifier_dropout", 0) is None:  # None: "the hidden dropout"
        config.classifier_dropout = probability
        names.append("classifier_dropout")
    return sorted(names)


def _four_bit_kwargs(device: str, compute_dtype: torch.dtype) -> dict[str, Any]:
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise RuntimeError(
            f"4-bit quantization needs a CUDA GPU (device is {device!r}); "
            "set quantize_4bit: false to train in full precision"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "4-bit quantization needs bitsandbytes: pip install 'lorascope[gpu]'"
        ) from err
    from transformers import BitsAndBytesConfig

    if compute_dtype == torch.float32:
        compute_dtype = torch.bfloat16
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": quant, "device_map": {"": device}}


def pair_text(query: str, passage: str) -> str:
    """The decoder reranker's single input string (RECIPE.md)."""
    return f"query: {query} document: {passage}"


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    arch: ArchitectureRoles,
    queries: Sequence[str],
    passages: Sequence[str],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Tokenize (query, passage) pairs into a padded batch for the reranker.

    Decoders: one string ``"query: {q} document: {p}"``, BOS prepended (when the tokenizer
    has one), no EOS, cut at ``max_length`` tokens - the passage comes last, so only the
    passage side is truncated (unless the query alone is longer). Encoders (BERT): a text pair
    ``[CLS] q [SEP] p [SEP]`` with ``truncation="only_second"``.

    Returns:
        ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for BERT) as tensors,
        padded to the longest pair on the tokenizer's padding side.
    """
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
    if not arch.decoder:
        return dict(
            tokenizer(
                list(queries),
                list(passages),
                truncation="only_second",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        )
    texts = [pair_text(q, p) for q, p in zip(queries, passages)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    features = [{"input_ids": (prefix + ids)[:max_length]} for ids in encoded]
    return dict(tokenizer.pad(features, padding=True, return_tensors="pt"))


def score_logits(logits: torch.Tensor) -> torch.Tensor:
    """The reranking score of each pair: the single output logit."""
    return logits[:, 0]
