"""One LoRA training run's settings, and what they resolve to on this machine."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

from lorascope.core import variants
from lorascope.core.precision import PRECISIONS, Choice, resolve
from lorascope.models.reranker import MAX_LENGTH


@dataclass(frozen=True)
class TrainSettings:
    """One LoRA reranker training run.

    Attributes:
        rank: LoRA rank r.
        steps: checkpoint steps, strictly increasing; the last is the run's length.
        targets: LoRA target roles: ``"all"``, ``"attn"``, ``"mlp"`` or role names.
        alpha: LoRA alpha (scale alpha / r, or alpha / sqrt(r) with rsLoRA).
        dropout: LoRA dropout.
        use_rslora: rank-stabilised scaling.
        use_dora: weight-decomposed LoRA.
        init: initialisation of A and B: ``default`` (peft's: Kaiming A, zero B), ``pissa``,
            ``olora`` or ``eva`` (see :mod:`lorascope.core.variants`).
        lr: peak learning rate (AdamW).
        schedule: ``constant`` or ``linear`` decay to 0.
        decay_steps: horizon of the linear decay (``None`` = the last checkpoint step).
        warmup_steps: linear warmup steps (Hugging Face convention: lr 0 at step 0).
        queries_per_step: groups per optimizer step.
        micro_batch_queries: groups per forward/backward pass (gradient accumulation =
            ``queries_per_step / micro_batch_queries``).
        group_size: passages per group (positive + first ``group_size - 1`` negatives);
            ``None`` = all the data has.
        max_length: tokens per (query, passage) input.
        batch_tokens: the pairs of a micro-batch go through the model in length-sorted
            sub-batches of at most this many padded tokens (``None``: all at once, padded to
            the longest); the loss is the same, the padding far less.
        base_dropout: the dropout probability of the frozen base model during training
            (``None``: the model's own, e.g. 0.1 for BERT, 0 for LLaMA); LoRA's own dropout
            is ``dropout``.
        seed: seeds the head and LoRA initialisation, dropout and the data order.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 where the hardware computes it
            natively: a GPU with bf16, a CPU with AMX-BF16 or AVX512-BF16); bf16 = bf16 base
            weights, fp32 trainable weights, bf16 autocast (:mod:`lorascope.core.precision`).
        gradient_checkpointing: ``True``, ``False`` or ``"auto"`` (on CUDA only).
        quantize_4bit: 4-bit NF4 base weights (QLoRA; CUDA only).
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm (``None`` = none; Hugging Face's default 1.0).
        device: ``auto`` (``cuda:0`` when CUDA is visible, else CPU), or a torch device.
    """

    rank: int
    steps: tuple[int, ...]
    targets: str | tuple[str, ...] = "all"
    alpha: float = 64.0
    dropout: float = 0.1
    use_rslora: bool = False
    use_dora: bool = False
    init: str = variants.DEFAULT_INIT
    lr: float = 1e-4
    schedule: Literal["constant", "linear"] = "constant"
    decay_steps: int | None = None
    warmup_steps: int = 0
    queries_per_step: int = 64
    micro_batch_queries: int = 16
    group_size: int | None = None
    max_length: int = MAX_LENGTH
    batch_tokens: int | None = None
    base_dropout: float | None = None
    seed: int = 0
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    quantize_4bit: bool = False
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    device: str = "auto"

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps or steps[0] < 1 or any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"checkpoint steps must be positive and strictly increasing: {steps}")
        if self.queries_per_step % self.micro_batch_queries:
            raise ValueError(
                f"queries_per_step {self.queries_per_step} is not a multiple of "
                f"micro_batch_queries {self.micro_batch_queries}"
            )
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.decay_steps is not None and self.decay_steps < steps[-1]:
            raise ValueError(f"decay_steps {self.decay_steps} ends before step {steps[-1]}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32, bf16 or auto, got {self.precision!r}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {self.batch_tokens}")
        if self.base_dropout is not None and not 0 <= self.base_dropout < 1:
            raise ValueError(f"base_dropout must be in [0, 1), got {self.base_dropout}")
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {self.group_size}")
        if self.init != variants.DEFAULT_INIT and self.init not in variants.INITS:
            raise ValueError(
                f"init must be {variants.DEFAULT_INIT} or one of {', '.join(variants.INITS)}, "
                f"got {self.init!r}"
            )
        if self.quantize_4bit and variants.rewrites_base(self.init):
            raise ValueError(f"init {self.init!r} rewrites the base weights: no quantize_4bit")
        # Normalise list inputs (from YAML/JSON) so settings compare and hash stably.
        object.__setattr__(self, "steps", steps)
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def total_steps(self) -> int:
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Runtime:
    """What the settings resolve to on this machine.

    Attributes:
        device: the torch device.
        precision: the resolved precision and why (:mod:`lorascope.core.precision`).
        gradient_checkpointing: whether activations are recomputed in the backward pass.
        attention: the attention implementation asked of transformers (``None``: its
            default); ``eager`` for bf16 on a CPU (SDPA's bf16 backward is slow there).
    """

    device: str
    precision: Choice
    gradient_checkpointing: bool
    attention: str | None = None

    @property
    def bf16(self) -> bool:
        return self.precision.bf16

    def autocast(self) -> Any:
        """The forward's autocast context: bf16 compute over fp32 trainable weights (a no-op
        in fp32)."""
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=self.bf16)


def resolve_runtime(settings: TrainSettings) -> Runtime:
    """Device, precision, gradient checkpointing and attention for this machine."""

    from lorascope.models.reranker import default_device

    device = default_device() if settings.device == "auto" else settings.device
    cuda = device.startswith("cuda")
    choice = resolve(settings.precision, device)
    ckpt = settings.gradient_checkpointing
    return Runtime(device, choice, cuda if ckpt == "auto" else bool(ckpt), choice.attention)
