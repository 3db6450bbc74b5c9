"""Cross-validated ridge probes: how well a layer's states linearly predict each feature.

For one layer, ``X`` = the pairs' states ``(pairs, hidden)`` and ``Y`` = their features
``(pairs, features)``; every feature gets its own ridge probe, all fitted at once (scikit-learn
fits a multi-output ``Ridge`` with one penalty per output).

* Outer folds: :class:`sklearn.model_selection.GroupKFold` on the qids (:func:`query_folds`),
  so no query has pairs on both sides of a fold; no shuffling, so the folds are a function of
  the pairs' order and qids alone.
* A probe: ``Pipeline(StandardScaler(), Ridge(alpha))`` - the states standardised with the
  training fold's mean and (population) standard deviation, the intercept fitted (Ridge
  centres the training targets); nothing is fitted on held-out pairs.
* The penalty: chosen per feature and outer fold by an inner query-grouped CV on the outer
  training fold (``inner_folds`` GroupKFold folds): the alpha of ``alphas`` whose pooled
  inner held-out R² is highest (ties: the larger alpha). Why a search rather than a fixed
  alpha: the best penalty depends on the hidden size, the number of pairs and the feature,
  and a fixed one would make the curves of models of different widths incomparable. With one
  alpha in ``alphas`` there is no inner search.
* Reported: the out-of-fold R² (sklearn's ``r2_score`` of the pooled held-out predictions
  of all folds against the truth), and per fold its held-out R² and alpha.

Cost per layer: ``folds x (inner_folds x len(alphas) + 1)`` multi-output ridge fits (5 x 25
with the defaults).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

Fold = tuple["np.ndarray", "np.ndarray"]


def readable_from(curve: Mapping[int, float], threshold: float) -> int | None:
    """The shallowest layer whose R² reaches ``threshold`` (None: no layer does)."""
    return next((layer for layer in sorted(curve) if curve[layer] >= threshold), None)


def query_folds(qids: Sequence[str], folds: int, what: str = "folds") -> list[Fold]:
    """``(train, test)`` index arrays of ``folds`` GroupKFold folds on ``qids`` (queries kept
    apart); ValueError naming ``what`` when there are fewer queries than folds."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(qids)
    distinct = len(set(qids))
    if distinct < folds:
        raise ValueError(f"probing params: '{what}' = {folds} query-grouped folds need at least "
                         f"{folds} queries, the pairs have {distinct}")
    return [(train, test) for train, test in GroupKFold(n_splits=folds).split(
        np.zeros(len(groups)), groups=groups)]


def check_inner_folds(qids: Sequence[str], folds: Sequence[Fold], inner_folds: int,
                      alphas: Sequence[float]) -> None:
    """ValueError naming ``inner_folds`` when an outer training fold holds fewer queries than
    ``inner_folds`` (only an alpha search, more than one alpha, has inner folds): checked on the
    pairs and the folds alone, before any model is loaded."""
    import numpy as np

    if len(alphas) <= 1:
        return
    groups = np.asarray(qids)
    for f, (train, _) in enumerate(folds):
        have = len(set(groups[train].tolist()))
        if have < inner_folds:
            raise ValueError(
                f"probing params: 'inner_folds' = {inner_folds} query-grouped folds need at "
                f"least {inner_folds} queries in every outer training fold; fold {f} trains on "
                f"{have} (lower 'inner_folds' or 'folds', raise 'queries', or give one alpha)")


def make_probe(alpha: float | np.ndarray):
    """An unfitted probe: standardise, then ridge with ``alpha`` (one per output allowed)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=alpha))])


def choose_alphas(X: np.ndarray, Y: np.ndarray, qids: Sequence[str], alphas: Sequence[float],
                  inner_folds: int) -> np.ndarray:
    """Per column of ``Y``, the alpha of ``alphas`` with the best pooled inner-CV R²."""
    import numpy as np
    from sklearn.metrics import r2_score

    if len(alphas) == 1:
        return np.full(Y.shape[1], float(alphas[0]))
    folds = query_folds(qids, inner_folds, "inner_folds")
    scores = np.empty((len(alphas), Y.shape[1]))
    for a, alpha in enumerate(alphas):
        predicted = np.empty_like(Y)
        for train, test in folds:
            predicted[test] = make_probe(float(alpha)).fit(X[train], Y[train]).predict(X[test])
        scores[a] = r2_score(Y, predicted, multioutput="raw_values")
    order = np.argsort(np.asarray(alphas, dtype=np.float64))[::-1]  # ties: the larger alpha
    best = order[np.argmax(scores[order], axis=0)]
    return np.asarray(alphas, dtype=np.float64)[best]


@dataclass
class LayerProbe:
    """One layer's probes of every feature.

    Attributes:
        r2: ``(features,)`` out-of-fold R² (pooled held-out predictions vs truth).
        fold_r2: ``(folds, features)`` each fold's held-out R².
        fold_alpha: ``(folds, features)`` the penalty each fold's probe used.
        predicted: ``(pairs, features)`` the held-out predictions.
    """

    r2: np.ndarray
    fold_r2: np.ndarray
    fold_alpha: np.ndarray
    predicted: np.ndarray


def probe_layer(X: np.ndarray, Y: np.ndarray, qids: Sequence[str], folds: Sequence[Fold],
                alphas: Sequence[float], inner_folds: int) -> LayerProbe:
    """Cross-validated probes of every column of ``Y`` from ``X`` on the given outer folds."""
    import numpy as np
    from sklearn.metrics import r2_score

    groups = np.asarray(qids)
    predicted = np.empty_like(Y, dtype=np.float64)
    fold_r2 = np.empty((len(folds), Y.shape[1]))
    fold_alpha = np.empty((len(folds), Y.shape[1]))
    for f, (train, test) in enumerate(folds):
        chosen = choose_alphas(X[train], Y[train], groups[train].tolist(), alphas, inner_folds)
        probe = make_probe(chosen if len(set(chosen.tolist())) > 1 else float(chosen[0]))
        predicted[test] = probe.fit(X[train], Y[train]).predict(X[test]).reshape(len(test), -1)
        fold_r2[f] = r2_score(Y[test], predicted[test], multioutput="raw_values")
        fold_alpha[f] = chosen
    r2 = r2_score(Y, predicted, multioutput="raw_values")
    return LayerProbe(np.asarray(r2, dtype=np.float64), fold_r2, fold_alpha, predicted)
