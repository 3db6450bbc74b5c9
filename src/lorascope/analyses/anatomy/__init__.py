"""LoRA update anatomy: how large, how spread and how low-rank each module's update is.

Parts: :mod:`.maths` (norms, spectra, effective rank of one module and of an adapter),
:mod:`.correlation` (update size against ablation drops), :mod:`.stage` (the ``anatomy``
stage), :mod:`.study`, :mod:`.cli`, :mod:`.report`; ``schema.yaml``.
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

#: One row per (model, adapter, step, layer, role) LoRA module: its update ``ΔW = s·B·A``
#: described from the r×r factorisation - Frobenius and spectral norm, effective rank (Roy &
#: Vetterli), stable rank, the singular values (length ``rank``), the adapter parameters, and
#: for DoRA the magnitude vector's norm and (with the base model) its relative shift (else null).
ANATOMY = Contract(
    "anatomy",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("step", pa.int32()),
            ("layer", pa.int32()),
            ("role", pa.string()),
            ("module", pa.string()),
            ("rank", pa.int32()),
            ("d_in", pa.int32()),
            ("d_out", pa.int32()),
            ("scaling", pa.float64()),
            ("params", pa.int64()),
            ("fro", pa.float64()),
            ("spectral", pa.float64()),
            ("effective_rank", pa.float64()),
            ("stable_rank", pa.float64()),
            ("sigma", pa.list_(pa.float64())),
            ("magnitude_norm", pa.float64()),
            ("magnitude_shift", pa.float64()),
        ]
    ),
)

ANALYSIS = Analysis(
    name="anatomy",
    title="Beyond the paper: LoRA update anatomy",
    intro=(
        "The LoRA updates themselves, ΔW = s·B·A per (layer, role) module, described from "
        "the r×r factorisation: where their mass sits, how it moves over checkpoints and "
        "ranks, how many directions they use, and whether size predicts importance."
    ),
    tables={ANATOMY.name: ANATOMY},
)
