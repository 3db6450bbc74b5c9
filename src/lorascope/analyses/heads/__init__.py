"""Attention-head ablation: which heads does ranking rely on, before and after LoRA?

Every attention head is zeroed (or mean-ablated) in turn, in place, for the base model (every
LoRA update off, the run's last trained score head: step 0) and chosen checkpoints; the drop
of every measure is tested per query against the unablated model. Parts: :mod:`.ablate` (the
scoring loop), :mod:`.stage` (the ``heads`` stage), :mod:`.study` (the ``analyses.heads``
block, its jobs and slice), :mod:`.cli`, :mod:`.report`; ``schema.yaml``.
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

#: The keys of both tables: one run, ablation mode, step, head and measure.
_KEYS = [
    ("model", pa.string()),
    ("adapter", pa.string()),
    ("split", pa.string()),
    ("mode", pa.string()),
    ("step", pa.int32()),
    ("layer", pa.int32()),
    ("head", pa.int32()),
    ("measure", pa.string()),
]
#: One row per (model, adapter, split, step, layer, head, measure): the mean over the subset's
#: judged queries of the measure with every head intact (``clean``) and with head ``head`` of
#: block ``layer`` ablated (``ablated``); ``drop`` = clean - ablated (> 0: the head helps).
#: ``layer`` is the 0-based block index (as the LoRA modules and the ablations number them),
#: ``head`` the 0-based query head. ``step`` 0 = the base model (every LoRA update switched
#: off) with the score head of the run's last checkpoint. ``p_value``: paired per-query test of
#: ablated vs clean; ``p_adjusted``: corrected over the heads of one (step, measure);
#: ``significant``: ``p_adjusted < alpha``. ``mode``: ``zero`` or ``mean`` ablation.
HEADS = Contract(
    "heads",
    pa.schema(
        [
            *_KEYS,
            ("clean", pa.float64()),
            ("ablated", pa.float64()),
            ("drop", pa.float64()),
            ("p_value", pa.float64()),
            ("p_adjusted", pa.float64()),
            ("significant", pa.bool_()),
            ("queries", pa.int32()),
        ]
    ),
)
#: The per-query values behind :data:`HEADS`: the same keys plus ``qid``; the unablated model
#: of each step has ``layer = head =`` :data:`CLEAN` (-1).
HEADS_QUERIES = Contract(
    "heads_queries",
    pa.schema(
        [
            *_KEYS,
            ("qid", pa.string()),
            ("value", pa.float64()),
        ]
    ),
)
#: ``layer`` and ``head`` of the per-query rows of the unablated model.
CLEAN = -1

ANALYSIS = Analysis(
    name="heads",
    title="Beyond the paper: attention heads",
    intro=(
        "Every attention head ablated in turn, for the base model and the trained adapter: "
        "which heads does ranking rely on, and which did LoRA make matter?"
    ),
    tables={HEADS.name: HEADS},
)
