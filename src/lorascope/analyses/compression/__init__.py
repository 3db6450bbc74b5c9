"""Post-hoc SVD rank compression of trained adapters (LoRA-Squeeze).

Driven by a sweep with ``generate: svd`` (evaluated in place by the ``evaluate`` stage, the
factor maths in :mod:`lorascope.core.lora_factors`); this analysis exports the compressed
adapters as plain peft adapters (:mod:`.stage`) and reports them beside the ranks trained
from the start (:mod:`.report`). It has no ``analyses.compression`` block.
"""

from __future__ import annotations

from lorascope.analyses.base import Analysis

ANALYSIS = Analysis(
    name="compression",
    title="Beyond the paper: post-hoc rank compression",
    intro=(
        "A trained adapter cut to lower ranks after training (truncated SVD of each module's "
        "B·A), beside adapters trained at those ranks."
    ),
    schema=False,
)
