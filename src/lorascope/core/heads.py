"""Attention heads as units: each head's output, read and edited in place.

Every supported architecture concatenates its heads' outputs (``heads x head_dim`` features,
head ``h`` at columns ``h*head_dim .. (h+1)*head_dim - 1``) and feeds them to the attention
output projection, the ``o`` role (``o_proj``, GPT-NeoX's ``attention.dense``, BERT's
``attention.output.dense``). Head ``h``'s contribution to the residual stream is therefore
``W_o[:, slice_h] @ x[slice_h]``: editing the *input* of the ``o`` module at a head's slice
is editing that head's output. A forward pre-hook on the ``o`` module does it: on the peft
LoRA wrapper when ``o`` carries LoRA, so base weight and LoRA update see the same edited input.

Zeroing a head this way equals zeroing that head's columns of the output projection (and of
``lora_A`` on ``o``, when present) in a freshly loaded model - for plain LoRA and rsLoRA;
DoRA normalises by the full weight's column norms, so for DoRA the edited *input* is the
definition. Nothing is written to the weights, so leaving the context restores the model
bitwise (the hooks are removed).

Grouped-query attention (Mistral, LLaMA-3) shares keys and values between heads, but each
query head still has its own output slice: heads here are the query heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lorascope.core.readout import task_model
from lorascope.core.roles import ArchitectureRoles, module_name

if TYPE_CHECKING:
    import torch

Head = tuple[int, int]
#: ``edit(layer, x)`` gets the ``o`` module's input of one layer (``batch x tokens x
#: heads*head_dim``) and returns the input to use instead (or ``None``: unchanged).
Edit = Callable[[int, "torch.Tensor"], "torch.Tensor | None"]
Mode = Literal["zero", "mean"]


@dataclass(frozen=True)
class HeadLayout:
    """How many heads each layer of a model has and where their outputs sit.

    Attributes:
        layers: transformer blocks (0-based ``layer`` indices, as everywhere in the package).
        heads: query heads per layer.
        head_dim: features per head at the output projection's input.
    """

    layers: int
    heads: int
    head_dim: int

    def columns(self, head: int) -> slice:
        """The ``o`` module's input features of ``head``."""
        if not 0 <= head < self.heads:
            raise ValueError(f"head {head} out of range 0..{self.heads - 1}")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def all_heads(self) -> list[Head]:
        """Every ``(layer, head)``, layer-major."""
        return [(layer, head) for layer in range(self.layers) for head in range(self.heads)]

    def check(self, heads: Iterable[Head]) -> list[Head]:
        """``heads`` as a list, each checked to exist in the model."""
        out = []
        for layer, head in heads:
            if not 0 <= layer < self.layers:
                raise ValueError(f"layer {layer} out of range 0..{self.layers - 1}")
            self.columns(head)
            out.append((int(layer), int(head)))
        return out


def o_module(model: torch.nn.Module, arch: ArchitectureRoles, layer: int) -> torch.nn.Module:
    """The output projection of ``layer`` (the peft LoRA wrapper when it carries LoRA)."""
    return task_model(model).get_submodule(module_name(arch, layer, "o"))


def head_layout(model: torch.nn.Module, arch: ArchitectureRoles) -> HeadLayout:
    """The heads of a reranker (a PeftModel or the task model), from its config and its
    output projections (``head_dim`` = the ``o`` module's input features / heads)."""
    task = task_model(model)
    config = task.config
    heads = int(config.num_attention_heads)
    layers = int(config.num_hidden_layers)
    o = o_module(model, arch, 0)
    base = getattr(o, "base_layer", o)
    features = int(base.in_features)
    if features % heads:
        raise ValueError(f"{arch.model_type}: output projection has {features} input features, "
                         f"not a multiple of {heads} heads")
    return HeadLayout(layers=layers, heads=heads, head_dim=features // heads)


@contextmanager
def edited_heads(model: torch.nn.Module, arch: ArchitectureRoles, edit: Edit,
                 layers: Iterable[int] | None = None) -> Iterator[None]:
    """Inside the block, every forward of ``layers`` (default all) passes the ``o`` module's
    input through ``edit`` first; the hooks are removed on exit (nothing else changed)."""
    layout = head_layout(model, arch)
    chosen = range(layout.layers) if layers is None else sorted(set(layers))

    def hook_for(layer: int) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...]) -> Any:
            new = edit(layer, args[0])
            return None if new is None else (new, *args[1:])

        return hook

    handles = [o_module(model, arch, layer).register_forward_pre_hook(hook_for(layer))
               for layer in chosen]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def ablated_heads(
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    heads: Iterable[Head],
    *,
    mode: Mode = "zero",
    means: Mapping[int, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Inside the block, the outputs of ``heads`` are zeroed (``mode="zero"``) or replaced by
    their mean output (``mode="mean"``: ``means[layer]`` is the mean ``o`` input of that layer,
    shape ``heads*head_dim``, e.g. from :class:`HeadMeans`) at every position."""
    layout = head_layout(model, arch)
    by_layer: dict[int, list[int]] = {}
    for layer, head in layout.check(heads):
        by_layer.setdefault(layer, []).append(head)
    if mode not in ("zero", "mean"):
        raise ValueError(f"head ablation mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean":
        missing = sorted(set(by_layer) - set(means or {}))
        if missing:
            raise ValueError(f"mean ablation needs the mean head outputs of layers {missing}")

    def edit(layer: int, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for head in by_layer[layer]:
            cols = layout.columns(head)
            if mode == "zero":
                x[..., cols] = 0
            else:
                x[..., cols] = means[layer][cols].to(dtype=x.dtype, device=x.device)  # type: ignore[index]
        return x

    with edited_heads(model, arch, edit, by_layer):
        yield


@contextmanager
def recorded_head_outputs(model: torch.nn.Module, arch: ArchitectureRoles,
                          layers: Iterable[int] | None = None
                          ) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Inside the block, every forward's ``o`` input of ``layers`` (default all) is appended to
    the yielded ``{layer: [tensor per forward]}`` (detached, as computed)."""
    recorded: dict[int, list[torch.Tensor]] = {}

    def keep(layer: int, x: torch.Tensor) -> None:
        recorded.setdefault(layer, []).append(x.detach())
        return None

    with edited_heads(model, arch, keep, layers):
        yield recorded


class HeadMeans:
    """Per layer, the running float64 sum of the output projection's input over the real tokens
    of every forward, and the token count: :meth:`means` gives the mean head outputs in the
    form :func:`ablated_heads` takes (``{layer: heads*head_dim}``). Nothing but a running sum
    per layer is held (unlike :func:`recorded_head_outputs`), so it scales to a large split.

    The attention mask of each forward is taken from the model's own call (a pre-hook on the
    model), so the means do not depend on the batch plan."""

    def __init__(self) -> None:
        self.sums: dict[int, Any] = {}
        self.tokens: dict[int, int] = {}
        self._mask: Any = None

    def _take_mask(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._mask = kwargs.get("attention_mask")

    def _add(self, layer: int, x: torch.Tensor) -> None:
        import torch

        if self._mask is None:
            raise RuntimeError("HeadMeans: the forward carried no attention_mask")
        keep = self._mask.to(device=x.device).bool()
        rows = x[keep].to(torch.float64)
        total = rows.sum(0)
        self.sums[layer] = total if layer not in self.sums else self.sums[layer] + total
        self.tokens[layer] = self.tokens.get(layer, 0) + int(keep.sum())

    @contextmanager
    def recording(self, model: torch.nn.Module, arch: ArchitectureRoles) -> Iterator[HeadMeans]:
        """Accumulate inside the block (every layer's output projection input)."""
        handle = model.register_forward_pre_hook(self._take_mask, with_kwargs=True)
        try:
            with edited_heads(model, arch, lambda layer, x: self._add(layer, x)):
                yield self
        finally:
            handle.remove()
            self._mask = None

    def means(self) -> dict[int, torch.Tensor]:
        import torch

        if not self.sums or not all(self.tokens.values()):
            raise ValueError("HeadMeans: no tokens recorded")
        return {layer: (total / self.tokens[layer]).to(torch.float32)
                for layer, total in sorted(self.sums.items())}
