"""Activation patching of axiomatic perturbations (as MechIR, Parry et al., ECIR 2025, does for
neural rankers): which layers, token groups and attention heads carry a passage edit - adding a
query term (TFC1), removing it, or adding a non-query term of the same length and rarity - into
the score, for the base model and trained checkpoints?

Parts: :mod:`.perturb` (the token-level perturbations), :mod:`.patch` (the patching passes),
:mod:`.stage` (the ``patching`` stage), :mod:`.study` (the ``analyses.patching`` block, its
jobs and slices), :mod:`.cli`, :mod:`.report`; ``schema.yaml``.

Numbers: ``layer`` l = 0..L-1 is the output of *block* l (the block ablations' and LoRA
modules' numbering; the lens calls it layer l + 1). ``step`` 0 is the base model (every LoRA
update switched off, the trained head of the run's last checkpoint). ``share`` of a patch =
sum over pairs (patched - baseline) / sum over pairs (perturbed - baseline).
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

_RUN = [("model", pa.string()), ("adapter", pa.string()), ("split", pa.string()),
        ("step", pa.int32()), ("perturbation", pa.string())]

#: One row per (run, split, step, perturbation, layer, group): the residual stream after block
#: ``layer`` of the baseline run patched at the positions of token ``group`` (query, passage,
#: injected, scoring, other; a decoder's last token that is itself injected counts as injected,
#: its pair then has no scoring position) with the perturbed run's; ``share`` = sum (patched - baseline) /
#: sum (perturbed - baseline) over the ``pairs``; ``mean_delta`` / ``mean_abs_delta`` = mean
#: (|perturbed - baseline|) of those pairs; ``tiny``: mean |delta| under ``tiny_delta``.
PATCHING = Contract(
    "patching",
    pa.schema([*_RUN, ("layer", pa.int32()), ("group", pa.string()), ("share", pa.float64()),
               ("mean_delta", pa.float64()), ("mean_abs_delta", pa.float64()),
               ("pairs", pa.int32()), ("tiny", pa.bool_())]),
)
#: One row per (run, split, step, perturbation, layer, head): head ``head``'s output (its slice
#: of the attention output projection's input) at every position of block ``layer`` taken
#: from the perturbed run; columns as :data:`PATCHING`.
PATCHING_HEADS = Contract(
    "patching_heads",
    pa.schema([*_RUN, ("layer", pa.int32()), ("head", pa.int32()), ("share", pa.float64()),
               ("mean_delta", pa.float64()), ("mean_abs_delta", pa.float64()),
               ("pairs", pa.int32()), ("tiny", pa.bool_())]),
)
#: Every pair's scores: ``site`` ``baseline`` / ``perturbed`` (``layer`` -1, ``unit`` ""),
#: ``residual`` (``unit`` = the group) or ``head`` (``unit`` = the head number) patched.
PATCHING_PAIRS = Contract(
    "patching_pairs",
    pa.schema([*_RUN, ("qid", pa.string()), ("docid", pa.string()), ("site", pa.string()),
               ("layer", pa.int32()), ("unit", pa.string()), ("score", pa.float64())]),
)

ANALYSIS = Analysis(
    name="patching",
    title="Beyond the paper: activation patching of axiomatic perturbations",
    intro=(
        "A query term added to the passage (TFC1), the query term removed, and a non-query "
        "term of the same token length and rarity added (the length control): which layers, "
        "token groups and attention heads carry the score change, for the base model and the "
        "trained reranker? Share = the part of the score change a patch from the perturbed "
        "run into the baseline run recovers."
    ),
    tables={PATCHING.name: PATCHING, PATCHING_HEADS.name: PATCHING_HEADS},
)
