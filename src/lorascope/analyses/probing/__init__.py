"""Linear probes for classic IR features: where in depth is BM25 linearly readable?

Per layer, a ridge regression predicts each (query, passage) pair's BM25 score, query-term
frequency, IDF-weighted query-term coverage and passage length from the scoring token's hidden
state, for the base model (step 0: every LoRA update off, the last checkpoint's head - the
lens's step 0) and chosen checkpoints of a run; cross-validated with queries kept apart.
Parts: :mod:`.features` (the IR features), :mod:`.states` (the read token's states),
:mod:`.probes` (the cross-validated ridge), :mod:`.stage` (the ``probing`` stage),
:mod:`.study` (the ``analyses.probing`` block, its jobs and slices), :mod:`.cli`,
:mod:`.report`; ``schema.yaml``.
"""

from __future__ import annotations

import pyarrow as pa

from lorascope.analyses.base import Analysis
from lorascope.core.contracts import Contract

_KEYS = [
    ("model", pa.string()),
    ("adapter", pa.string()),
    ("split", pa.string()),
    ("step", pa.int32()),
    ("layer", pa.int32()),
    ("feature", pa.string()),
]

#: One row per (model, adapter, split, step, layer, feature): the out-of-fold R² of a ridge
#: probe that predicts ``feature`` from the hidden state at ``layer`` (the lens's numbering:
#: l in 1..L = the output of block l) of the scoring token. ``r2``: sklearn's ``r2_score`` of
#: the pooled held-out predictions of every fold against the truth; ``r2_fold_mean`` /
#: ``r2_fold_std``: the mean and (population) standard deviation of the per-fold R²;
#: ``alpha``: the median of the folds' chosen ridge penalties; ``idf``: the collection the
#: IDF / BM25 statistics came from (``shipped`` or ``split``). ``step`` 0 = the base model
#: (every LoRA update switched off) with the head of the run's last checkpoint.
PROBING = Contract(
    "probing",
    pa.schema(
        _KEYS
        + [
            ("r2", pa.float64()),
            ("r2_fold_mean", pa.float64()),
            ("r2_fold_std", pa.float64()),
            ("alpha", pa.float64()),
            ("folds", pa.int32()),
            ("pairs", pa.int32()),
            ("queries", pa.int32()),
            ("idf", pa.string()),
        ]
    ),
)
#: The folds behind :data:`PROBING`: per fold its held-out R², chosen alpha and sizes.
PROBING_FOLDS = Contract(
    "probing_folds",
    pa.schema(
        _KEYS
        + [
            ("fold", pa.int32()),
            ("r2", pa.float64()),
            ("alpha", pa.float64()),
            ("train_pairs", pa.int32()),
            ("test_pairs", pa.int32()),
            ("test_queries", pa.int32()),
        ]
    ),
)

ANALYSIS = Analysis(
    name="probing",
    title="Beyond the paper: linear probes for IR features",
    intro=(
        "Ridge probes that read classic IR features (BM25, query-term frequency, IDF-weighted "
        "query-term coverage, passage length) from the scoring token's hidden state at every "
        "layer, cross-validated with queries kept apart: from which depth is BM25 linearly "
        "readable, and does LoRA training move it?"
    ),
    tables={PROBING.name: PROBING},
)
