"""The relevance lens: the trained score head read out at every layer.

Where in depth does relevance become readable, for the base model and as training goes on?
Parts: :mod:`lorascope.core.readout` (the maths, shared with the probes), :mod:`.readable`
(when a layer counts as readable), :mod:`.stage` (the ``lens`` stage), :mod:`.study` (the
``analyses.lens`` block, its jobs and slices), :mod:`.cli`, :mod:`.report`; ``schema.yaml``.
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

#: One row per (model, adapter, split, step, layer, measure): the mean over the split's judged
#: queries of the ranking the trained score head gives when it reads hidden state ``layer``.
#: ``layer`` l in 1..L = the output of block l (the block ablations and LoRA modules call
#: layer l - 1); layer L is the model's own score. The embeddings (no block applied) are left
#: out: their read token has seen no other token.
#: ``step`` 0 = the base model (every LoRA update switched off) read with the head of the run's
#: last checkpoint.
LENS = Contract(
    "lens",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("split", pa.string()),
            ("step", pa.int32()),
            ("layer", pa.int32()),
            ("measure", pa.string()),
            ("value", pa.float64()),
            ("queries", pa.int32()),
        ]
    ),
)
#: The per-query values behind :data:`LENS` (same keys plus ``qid``), for paired tests.
LENS_QUERIES = Contract(
    "lens_queries",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("split", pa.string()),
            ("step", pa.int32()),
            ("layer", pa.int32()),
            ("measure", pa.string()),
            ("qid", pa.string()),
            ("value", pa.float64()),
        ]
    ),
)

ANALYSIS = Analysis(
    name="lens",
    title="Beyond the paper: relevance lens",
    intro=(
        "The trained score head applied to every layer's hidden state: from which depth is "
        "relevance readable, for the base model and as training goes on?"
    ),
    tables={LENS.name: LENS},
)
