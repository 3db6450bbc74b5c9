"""Boundary-layer pruning (companion paper, Chen et al., arXiv 2503.23360).

Choose ``b`` on a ``generate: boundary`` sweep, export the adapter with LoRA only in layers
``0..b``, compare pruned with full on test splits. Parts: :mod:`.selection` (choosing b),
:mod:`.export` (the pruned adapter), :mod:`.prune` and :mod:`.compare` (the two stages),
:mod:`.summary` (its summary rows), :mod:`.study`, :mod:`.cli`, :mod:`.report`; ``schema.yaml``.
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

#: The sweep name of the pruned-vs-full rows in the study's evaluations table (ablations
#: ``full`` and :data:`PRUNED`).
PRUNED_SWEEP = "boundary_pruned"
PRUNED = "pruned"

#: One row per (model, adapter, step, test split) pruned-vs-full comparison: the boundary b
#: chosen on the selection split, the LoRA parameters removed, and unmerged scoring speed. The
#: metrics of both adapters are rows of :data:`EVALUATIONS` (sweep ``boundary_pruned``,
#: ablations ``full`` and ``pruned``).
BOUNDARY = Contract(
    "boundary",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("step", pa.int32()),
            ("split", pa.string()),
            ("selection_split", pa.string()),
            ("measure", pa.string()),
            ("selection_value", pa.float64()),
            ("b", pa.int32()),
            ("num_layers", pa.int32()),
            ("params_removed_fraction", pa.float64()),
            ("lora_params_full", pa.int64()),
            ("lora_params_pruned", pa.int64()),
            ("pairs_per_second_full", pa.float64()),
            ("pairs_per_second_pruned", pa.float64()),
            ("speedup", pa.float64()),
        ]
    ),
)

ANALYSIS = Analysis(
    name="boundary",
    title="Beyond the paper: boundary layer",
    intro=(
        "Keep LoRA only in layers 0..b: the boundary sweep picks b on the selection split, the "
        "pruned adapter (a plain peft adapter without the upper layers' LoRA) is then scored "
        "against the full one on the test splits."
    ),
    tables={BOUNDARY.name: BOUNDARY},
    summary=True,
)
