"""The scoring token's hidden state after every block, for every pair of a split.

The lens's read token and numbering (:mod:`lorascope.core.readout`): BERT's
``[CLS]``, a decoder's last non-pad token; layer l in 1..L = the output of block l (the
embeddings, layer 0, are left out as in the lens: there the read token has seen no other
token).

Which states: what the lens reads - for the decoders (LLaMA, Mistral, GPT-NeoX) the final
norm applied to every layer's residual stream (Hugging Face's last hidden state is already
final-normed and is taken as it is), for BERT the blocks' outputs as they are (each block ends
in a LayerNorm). So a probe sees, at every layer, a vector of the kind the score head reads at
the top, and layer L is exactly the head's input. The final norm of a decoder is a per-pair
rescaling (RMSNorm: divide by the vector's RMS) followed by a per-dimension gain; the probes
standardise every dimension, which undoes the gain, so normed and raw states differ for a
probe only by that per-pair rescaling.

Every pass checks the readout: the score head applied to the collected layer-L states must
reproduce the model's own scores (:func:`~lorascope.core.readout.check_final_layer`),
which proves the token and the matching of batches to pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorascope.core.readout import (
    LayerScores,
    last_token_positions,
    layer_scores,
    readout_for,
    recorded_pass,
    recording_hidden,
    task_model,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lorascope.core.roles import ArchitectureRoles
    from lorascope.core.scoring import PreparedPairs

log = logging.getLogger(__name__)


@dataclass
class LayerStates:
    """Every pair's read-token state at layers 1..L.

    Attributes:
        keys: ``(qid, docid)`` per row, the prepared pairs' order.
        states: ``(pairs, L, hidden)`` float32; ``states[:, l - 1]`` = layer l.
        check: the layer-L head scores and the model's own, as the lens's :class:`LayerScores`
            (only its last column is meaningful).
        stats: the scoring pass's statistics.
    """

    keys: tuple[tuple[str, str], ...]
    states: np.ndarray
    check: LayerScores
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.states.shape[1]


def read_states(model: torch.nn.Module, arch: ArchitectureRoles,
                hidden_states: tuple[torch.Tensor, ...], input_ids: torch.Tensor
                ) -> torch.Tensor:
    """``(batch, L, hidden)``: the read token's state after each block, final-normed for the
    decoders (see the module docstring); the embeddings are left out."""
    import torch

    readout = readout_for(arch)
    task = task_model(model)
    first = hidden_states[0]
    batch = first.shape[0]
    rows = torch.arange(batch, device=first.device)
    if readout.token == "last":
        positions = last_token_positions(input_ids.to(first.device),
                                         getattr(task.config, "pad_token_id", None))
    else:
        positions = torch.zeros(batch, dtype=torch.long, device=first.device)
    states = torch.stack([h[rows, positions] for h in hidden_states[1:]], dim=1)
    if readout.norm is not None:
        # entries 1..L-1 are raw residual streams; entry L is already final-normed
        norm = task.get_submodule(readout.norm)
        states = torch.cat([norm(states[:, :-1]), states[:, -1:]], dim=1)
    return states


def _recording(model: torch.nn.Module, arch: ArchitectureRoles):
    """Every forward's ``(states, head score at L)``, on the CPU in float32."""

    def keep(hidden: Any, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = read_states(model, arch, hidden, input_ids)
        top = layer_scores(model, arch, hidden[-1:], input_ids)[:, 0]
        return states.float().cpu(), top.float().cpu()

    return recording_hidden(model, keep, "probing")


def collect_states(
    prepared: PreparedPairs,
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    *,
    device: str | torch.device = "cpu",
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "states",
) -> LayerStates:
    """The read-token state of every prepared pair at every layer, one forward pass per batch
    (length-sorted plan; after a CUDA out-of-memory error the pass is redone with half the
    token budget: :func:`lorascope.core.readout.recorded_pass`, shared with the lens).
    Memory: pairs x L x hidden float32 on the host (4300 pairs of a 32-block, 4096-wide
    model: 2.3 GB)."""
    import numpy as np

    readout_for(arch)
    plan, records, own, budget = recorded_pass(
        prepared, model, lambda: _recording(model, arch), device=device,
        batch_tokens=batch_tokens, progress=progress, desc=desc, what="collecting states",
        batch_size=lambda record: record[0].shape[0])
    depth, hidden = records[0][0].shape[1:]
    states = np.empty((len(prepared), depth, hidden), dtype=np.float32)
    top = np.empty((len(prepared), 1), dtype=np.float64)
    for batch, (s, t) in zip(plan, records):
        states[batch] = s.numpy()
        top[batch, 0] = t.numpy()
    model_scores = np.array([own[k] for k in prepared.keys], dtype=np.float64)
    stats = dict(prepared.last_stats.to_dict()) if prepared.last_stats else {}
    stats["batch_tokens"] = budget
    return LayerStates(prepared.keys, states, LayerScores(prepared.keys, top, model_scores),
                       stats)
