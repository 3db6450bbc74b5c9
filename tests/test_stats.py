"""Paired tests, Holm / Bonferroni corrections, and the convergence rule of Table 2."""

from __future__ import annotations

import itertools
import random

import pytest

from lorascope.core.stats import bonferroni, compare, convergence_step, correct, holm


def test_holm_known_values() -> None:
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}
    # sorted: d .005*4=.02, a .01*3=.03, c .03*2=.06, b max(.06, .04*1)=.06
    assert holm(p) == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    assert list(holm(p)) == list(p)  # input order kept


def test_holm_caps_at_one_and_is_monotone() -> None:
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}
    assert holm({"x": 0.2}) == {"x": 0.2}
    assert holm({}) == {}
    rng = random.Random(0)
    p = {str(i): rng.random() ** 3 for i in range(20)}
    adjusted = holm(p)
    ordered = sorted(p, key=p.get)
    assert all(adjusted[a] <= adjusted[b] for a, b in itertools.pairwise(ordered))
    assert all(p[k] <= adjusted[k] <= bonferroni(p)[k] for k in p)


def test_bonferroni_and_dispatch() -> None:
    p = {"a": 0.01, "b": 0.3}
    assert bonferroni(p) == pytest.approx({"a": 0.02, "b": 0.6})
    assert correct(p, "none") == p
    assert correct(p, "holm") == holm(p)
    with pytest.raises(ValueError, match="correction must be one of holm, bonferroni, none"):
        correct(p, "fdr")


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_identical_runs_give_p_one(test) -> None:
    full = {f"q{i}": i / 10 for i in range(10)}
    assert compare(full, dict(full), test) == 1.0
    assert compare({"q": 0.5}, {"q": 0.7}, test) == 1.0  # one query: no test possible


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_clear_drop_is_significant(test) -> None:
    rng = random.Random(1)
    full = {f"q{i}": 0.6 + rng.random() * 0.3 for i in range(30)}
    worse = {q: v - 0.2 - rng.random() * 0.05 for q, v in full.items()}
    assert compare(full, worse, test) < 1e-4
    noisy = {q: v + rng.choice([-1, 1]) * 0.01 for q, v in full.items()}
    assert compare(full, noisy, test) > 0.01


def test_constant_shift_ttest() -> None:
    full = {f"q{i}": 0.5 for i in range(5)}
    assert compare(full, {q: 0.25 for q in full}, "ttest") == 0.0


def test_compare_errors() -> None:
    with pytest.raises(ValueError, match="different queries"):
        compare({"a": 1.0, "b": 1.0}, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="test must be one of wilcoxon, ttest"):
        compare({"a": 1.0}, {"a": 1.0}, "sign")


def test_convergence_step() -> None:
    curve = {300: 0.75, 5: 0.2, 10: 0.5, 100: 0.745, 200: 0.74}
    assert convergence_step(curve, 0.01) == 100
    assert convergence_step(curve, 0.0) == 300
    assert convergence_step(curve, 0.3) == 10
    assert convergence_step(curve, 1.0) == 5
    assert convergence_step({5: 0.7, 10: 0.7}, 0.0) == 5  # ties: the earliest
    assert convergence_step({5: 0.74, 10: 0.75}, 0.01) == 5  # the boundary is "within"
    assert convergence_step({5: 3.0, 10: 1.0, 20: 1.05}, 0.1, higher_is_better=False) == 10


def test_convergence_step_errors() -> None:
    with pytest.raises(ValueError, match="at least one checkpoint"):
        convergence_step({}, 0.01)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        convergence_step({1: 0.5}, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        convergence_step({1: float("nan")}, 0.1)
