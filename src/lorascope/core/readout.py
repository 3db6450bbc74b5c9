"""Reading a reranker at every layer: the scoring token's hidden state after each block, and the
trained head applied to it (the relevance lens; the probes read the same states).

The reranker's score is its trained head applied to one token's final hidden state. The lens
(:mod:`lorascope.analyses.lens`) applies that same head to the hidden state after every block -
where in depth does relevance become readable, and how does training move it? One forward pass per batch with
``output_hidden_states`` gives every layer; per layer the scores rank the split's candidates
and :mod:`lorascope.core.metrics` measures the ranking per query.

Layer numbering: ``layer`` counts the transformer blocks applied: l is the output of block l,
L (the depth) the full model. The rest of the package (LoRA modules, ablations, the boundary
sweep) numbers *blocks* from 0: block i's output is lens layer i + 1. :func:`layer_scores`
also reads layer 0, the embeddings, but the stage leaves it out: there the read token has
seen no other token - BERT's ``[CLS]`` embedding is the same for every pair, a decoder scores
its last token's own embedding, the same for every pair ending in the same token - so its
scores tie and its "ranking" is largely ir-measures' tie-breaking by docid (measured on
MiniLM, DL19: a constant 0.443 nDCG@10 at layer 0 for every checkpoint, above the trained
model's layers 1-5).

Readout, per architecture - what the sequence classifier does after its last block:

* LLaMA / Mistral: ``model.norm`` (RMSNorm), then ``score``, on the last non-pad token: the
  rightmost position whose input id is not the pad token, Hugging Face's own rule (scoring
  pads on the right, :mod:`lorascope.models.reranker`).
* GPT-NeoX: ``gpt_neox.final_layer_norm``, then ``score``, same token.
* BERT: ``bert.pooler`` (dense + tanh on ``[CLS]``), then ``classifier``. BERT blocks end in
  a LayerNorm, so nothing is added.

Hugging Face returns L + 1 hidden states whose last one is already the final-normed output
(``last_hidden_state``), so the decoders' norm is applied to entries 0..L-1 only: normalising
the last one again would change it (tests/test_lens.py pins that convention). Every pass
checks that lens layer L reproduces the model's own score, so a change of convention in a
future transformers release fails loudly instead of shifting the curves.

Cost: a lens pass takes about the time of a plain scoring pass (measured, interleaved, best of
3: 0.86-0.96x on CPU for a tiny LLaMA and MiniLM; 1.02-1.06x on an H100 for a random 24-block
width-1024 LLaMA) but holds every layer's hidden states of a batch: +31-33 % peak GPU memory
there. An out-of-memory error halves the token budget and redoes the pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lorascope.core.roles import ArchitectureRoles, UnsupportedArchitecture

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lorascope.core.scoring import PreparedPairs

log = logging.getLogger(__name__)

#: How far lens layer L may be from the model's own score (relative to max(1, |score|)).
FINAL_LAYER_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}

Key = tuple[str, str]


class ReadoutError(RuntimeError):
    """The readout of the deepest layer does not reproduce the model's own score."""


@dataclass(frozen=True)
class Readout:
    """How an architecture's sequence classifier turns its last hidden states into a score.

    Attributes:
        norm: module path (inside the task model) of the final norm the decoder applies after
            its last block; ``None`` when the blocks' output is read as it is (BERT).
        heads: module paths applied in order to the read token's state, each given a
            length-1 sequence ``(N, 1, hidden)`` (BERT's pooler takes position 0 of it).
        token: ``last`` = the last non-pad token (decoders), ``first`` = ``[CLS]``.
    """

    norm: str | None
    heads: tuple[str, ...]
    token: Literal["last", "first"]


_DECODER = Readout(norm="model.norm", heads=("score",), token="last")
READOUTS: dict[str, Readout] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "gpt_neox": Readout(norm="gpt_neox.final_layer_norm", heads=("score",), token="last"),
    "bert": Readout(norm=None, heads=("bert.pooler", "classifier"), token="first"),
}


def readout_for(arch: ArchitectureRoles) -> Readout:
    """The readout of ``arch``; :class:`UnsupportedArchitecture` for one the lens lacks."""
    try:
        return READOUTS[arch.model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"the relevance lens has no readout for architecture {arch.model_type!r}; "
            f"it supports {', '.join(sorted(READOUTS))}"
        ) from None


def task_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face sequence classifier inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def last_token_positions(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Per row, the rightmost position whose id is not the pad token (Hugging Face's rule for
    decoder classifiers; the last position when there is no pad token)."""
    import torch

    batch, width = input_ids.shape
    if pad_token_id is None:
        return torch.full((batch,), width - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).to(torch.long)
    positions = torch.arange(width, device=input_ids.device, dtype=torch.long)
    return (positions * non_pad).argmax(-1)


def layer_scores(
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    hidden_states: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
) -> torch.Tensor:
    """The score head applied to every hidden state: ``(batch, len(hidden_states))``.

    Args:
        model: the reranker (PeftModel or plain task model) whose head and norm are used -
            with an adapter loaded, the trained head (``modules_to_save``).
        arch: its roles.
        hidden_states: Hugging Face's ``output_hidden_states`` tuple: embeddings, then one per
            block, the last already final-normed.
        input_ids: the batch's ids (right- or left-padded), to find each row's read token.
    """
    import torch

    readout = readout_for(arch)
    task = task_model(model)
    first = hidden_states[0]
    batch, hidden = first.shape[0], first.shape[-1]
    rows = torch.arange(batch, device=first.device)
    if readout.token == "last":
        pad = getattr(task.config, "pad_token_id", None)
        positions = last_token_positions(input_ids.to(first.device), pad)
    else:
        positions = torch.zeros(batch, dtype=torch.long, device=first.device)
    states = torch.stack([h[rows, positions] for h in hidden_states])  # (layers, batch, hidden)
    if readout.norm is not None:
        # entries 0..L-1 are raw residual streams; entry L is already final-normed
        norm = task.get_submodule(readout.norm)
        states = torch.cat([norm(states[:-1]), states[-1:]])
    out = states.reshape(-1, 1, hidden)
    for path in readout.heads:
        out = task.get_submodule(path)(out)
    return out.reshape(len(hidden_states), batch, -1)[..., 0].transpose(0, 1)


@contextmanager
def recording_hidden(model: torch.nn.Module, keep: Callable[[Any, torch.Tensor], Any],
                     who: str = "the lens") -> Iterator[list[Any]]:
    """Inside the block, every forward of ``model`` also returns its hidden states, and
    ``keep(hidden_states, input_ids)`` of each forward is appended to the yielded list.

    Hooks on the task model: a pre-hook that asks for ``output_hidden_states`` (peft passes
    ``output_hidden_states=None`` explicitly, so setting it in the config would not reach the
    backbone) and a hook that reads them; ``keep`` decides what little is kept.
    """
    task = task_model(model)
    records: list[Any] = []

    def ask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "output_hidden_states": True}

    def read(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = getattr(output, "hidden_states", None)
        if not hidden:
            raise ReadoutError(f"{type(module).__name__} returned no hidden states")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ReadoutError(f"{who} needs input_ids (not inputs_embeds) to find the read "
                               "token")
        records.append(keep(hidden, input_ids))

    handles = [task.register_forward_pre_hook(ask, with_kwargs=True),
               task.register_forward_hook(read, with_kwargs=True)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _recording(model: torch.nn.Module, arch: ArchitectureRoles):
    """Every forward's per-layer scores ``(batch, layers + 1)`` (only the small score matrix
    is kept)."""
    return recording_hidden(model, lambda hidden, ids: layer_scores(model, arch, hidden, ids))


# --------------------------------------------------------------------------- scoring


@dataclass
class LayerScores:
    """Every pair's score at every lens layer, and the model's own score.

    Attributes:
        keys: ``(qid, docid)`` per row, the prepared pairs' order.
        values: ``(pairs, layers + 1)`` float64; column l = lens layer l.
        model_scores: ``(pairs,)`` the model's own scores (the ``scoring`` module's).
        stats: the scoring pass's :class:`~lorascope.core.scoring.ScoringStats` as a dict.
    """

    keys: tuple[Key, ...]
    values: np.ndarray
    model_scores: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """L: the deepest lens layer (the number of blocks)."""
        return self.values.shape[1] - 1

    @property
    def final_diff(self) -> float:
        """Max |lens layer L - the model's own score|, relative to max(1, |score|)."""
        import numpy as np

        if not len(self.keys):
            return 0.0
        scale = np.maximum(1.0, np.abs(self.model_scores))
        return float(np.max(np.abs(self.values[:, -1] - self.model_scores) / scale))

    def run(self, layer: int) -> list[tuple[str, str, float]]:
        """Lens layer ``layer``'s scores as an ir-measures run ``(qid, docid, score)``."""
        column = self.values[:, layer].tolist()
        return [(q, d, s) for (q, d), s in zip(self.keys, column)]


def recorded_pass(
    prepared: PreparedPairs,
    model: torch.nn.Module,
    recording: Callable[[], AbstractContextManager[list[Any]]],
    *,
    device: str | torch.device = "cpu",
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "lens",
    what: str = "in the lens",
    batch_size: Callable[[Any], int] = len,
) -> tuple[list[list[int]], list[Any], dict[Key, float], int]:
    """One scoring pass over every prepared pair with an explicit length-sorted plan, inside
    ``recording()`` (a context that yields the list its hooks append one record per batch to):
    ``(plan, records, the model's own scores, the token budget that worked)``.

    After a CUDA out-of-memory error the whole pass is redone with half the token budget
    (hooks that keep every layer's hidden states of a batch take more memory than plain
    scoring); ``what`` says where in the warning. The records are checked to match the plan,
    batch by batch (``batch_size(record)``: the pairs a record holds).

    Raises:
        ReadoutError: the recorded batches do not match the plan.
    """
    import torch

    from lorascope.core.batches import plan_batches

    budget = prepared.batch_tokens if batch_tokens is None else int(batch_tokens)
    oom = tuple(e for e in (getattr(torch, "OutOfMemoryError", None),
                            getattr(torch.cuda, "OutOfMemoryError", None))
                if isinstance(e, type))
    while True:
        plan = plan_batches(prepared.lengths, budget)
        try:
            with recording() as records:
                own = prepared.score(model, device=device, progress=progress, desc=desc,
                                     batches=plan)
            break
        except oom:
            if all(len(b) == 1 for b in plan):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of GPU memory %s with %d-token batches; redoing the pass with %d",
                        what, budget, max(1, budget // 2))
            budget = max(1, budget // 2)
    if len(records) != len(plan) or any(batch_size(r) != len(b) for r, b in zip(records, plan)):
        raise ReadoutError(f"recorded {len(records)} batches for a plan of {len(plan)}: the "
                           "scoring loop no longer runs the plan in order")
    return plan, records, own, budget


def score_layers(
    prepared: PreparedPairs,
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    *,
    device: str | torch.device = "cpu",
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "lens",
) -> LayerScores:
    """Score every prepared pair at every lens layer in one forward pass per batch.

    Batches go through :meth:`PreparedPairs.score` with an explicit, length-sorted plan, with
    hooks reading the hidden states; the recorded batches are matched to the plan in order,
    and the deepest layer is checked against the scores the model itself returned, which also
    proves the matching. After a CUDA out-of-memory error the whole pass is redone with half
    the token budget (the hidden states of every layer stay alive during a batch).

    Args:
        batch_tokens: token budget per batch; ``None`` = the prepared pairs' budget.

    Returns:
        The per-layer scores; ``stats["batch_tokens"]`` is the budget that worked.
    """
    import numpy as np

    plan, records, own, budget = recorded_pass(
        prepared, model, lambda: _recording(model, arch), device=device,
        batch_tokens=batch_tokens, progress=progress, desc=desc, what="in the lens")
    values = np.empty((len(prepared), records[0].shape[1] if records else 1), dtype=np.float64)
    for batch, scores in zip(plan, records):
        values[batch] = scores.float().cpu().numpy()
    model_scores = np.array([own[k] for k in prepared.keys], dtype=np.float64)
    stats = dict(prepared.last_stats.to_dict()) if prepared.last_stats else {}
    stats["batch_tokens"] = budget
    return LayerScores(prepared.keys, values, model_scores, stats)


def check_final_layer(scores: LayerScores, dtype: str, what: str) -> float:
    """Raise :class:`ReadoutError` unless lens layer L reproduces the model's own scores."""
    diff = scores.final_diff
    tolerance = FINAL_LAYER_TOLERANCE.get(dtype, 1e-2)
    if diff > tolerance:
        raise ReadoutError(
            f"{what}: the lens at the last layer differs from the model's own score by {diff:.3g} "
            f"(tolerance {tolerance:g} for {dtype}); the readout no longer matches the "
            "classifier (hidden-state or head convention changed?)"
        )
    return diff
