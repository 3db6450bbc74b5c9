"""The IR-feature probes (lorascope.analyses.probing): the probes' maths against a closed-form
ridge, query-grouped folds, the features on a hand-made collection, the read-token states
against a plain forward pass, the stage end to end on tiny LLaMA / GPT-NeoX / BERT runs,
config and params errors naming the key, and the report section.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from helpers import build_adapter, load_adapted, write_toy_split

from lorascope.analyses.probing import PROBING, PROBING_FOLDS
from lorascope.analyses.probing.features import (
    FEATURES,
    collection_stats,
    feature_matrix,
    pair_features,
    shipped_passages,
)
from lorascope.analyses.probing.probes import choose_alphas, probe_layer, query_folds
from lorascope.core.contracts import read_provenance, read_table
from lorascope.core.termstats import CollectionStats, terms

pytestmark = pytest.mark.usefixtures("one_thread")

#: closed-form ridge vs scikit-learn's Pipeline: float64 solves of the same system
RIDGE_ATOL = 1e-8


# --------------------------------------------------------------------------- probes' maths


def _toy_problem(n_queries: int = 12, per_query: int = 5, hidden: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    qids = [f"q{i:02d}" for i in range(n_queries) for _ in range(per_query)]
    X = rng.normal(size=(len(qids), hidden)) * rng.uniform(0.1, 5, size=hidden) + 3.0
    w = rng.normal(size=(hidden, 2))
    Y = X @ w + rng.normal(scale=3.0, size=(len(qids), 2)) + [10.0, -4.0]
    return X, Y, qids


def _closed_form(X_train, y_train, X_test, alpha):
    """Ridge as sklearn's Pipeline(StandardScaler, Ridge) computes it, written out: states
    standardised with the training mean and population std, the target centred, the
    intercept = the training mean of y (the standardised training columns have mean 0)."""
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    Z, Zt = (X_train - mean) / std, (X_test - mean) / std
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y_train - y_train.mean()))
    return Zt @ w + y_train.mean()


def _r2(y, p):
    return 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()


@pytest.mark.parametrize("hidden", [8, 40])  # fewer / more dimensions than training pairs
def test_probe_r2_is_closed_form_ridge(hidden) -> None:
    X, Y, qids = _toy_problem(hidden=hidden)
    folds = query_folds(qids, 4)
    result = probe_layer(X, Y, qids, folds, alphas=[3.0], inner_folds=3)
    expected = np.empty_like(Y)
    for f, (train, test) in enumerate(folds):
        for j in range(Y.shape[1]):
            expected[test, j] = _closed_form(X[train], Y[train, j], X[test], 3.0)
            assert result.fold_r2[f, j] == pytest.approx(_r2(Y[test, j], expected[test, j]),
                                                         abs=RIDGE_ATOL)
    np.testing.assert_allclose(result.predicted, expected, atol=RIDGE_ATOL, rtol=0)
    for j in range(Y.shape[1]):
        assert result.r2[j] == pytest.approx(_r2(Y[:, j], expected[:, j]), abs=RIDGE_ATOL)
    assert (result.fold_alpha == 3.0).all()


def test_searched_alphas_are_the_inner_cv_best_and_used() -> None:
    """With a grid, each fold's alpha per feature is the one whose pooled inner query-grouped
    CV R² (closed form) is best, and the fold's predictions are the closed form with it."""
    X, Y, qids = _toy_problem(hidden=40, seed=3)
    Y[:, 1] = np.random.default_rng(9).normal(size=len(qids))  # noise: wants a large alpha
    alphas = [0.01, 1.0, 100.0, 1e4]
    folds = query_folds(qids, 3)
    result = probe_layer(X, Y, qids, folds, alphas=alphas, inner_folds=3)
    groups = np.asarray(qids)
    for f, (train, test) in enumerate(folds):
        inner = query_folds(groups[train].tolist(), 3, "inner_folds")
        Xtr, Ytr = X[train], Y[train]
        for j in range(2):
            scores = []
            for alpha in alphas:
                pred = np.empty(len(train))
                for itr, ite in inner:
                    pred[ite] = _closed_form(Xtr[itr], Ytr[itr, j], Xtr[ite], alpha)
                scores.append(_r2(Ytr[:, j], pred))
            # the documented rule: the best pooled inner R², ties to the larger alpha
            best = max(a for a, r2 in zip(alphas, scores) if r2 == max(scores))
            assert result.fold_alpha[f, j] == best
            np.testing.assert_allclose(result.predicted[test, j],
                                       _closed_form(Xtr, Ytr[:, j], X[test], best),
                                       atol=1e-7, rtol=0)
    # pure noise is shrunk hard; the signal column mostly keeps a small penalty
    assert result.fold_alpha[:, 1].min() >= 100.0 > np.median(result.fold_alpha[:, 0])
    np.testing.assert_array_equal(choose_alphas(X, Y, qids, [5.0], 3), [5.0, 5.0])
    # an exact tie (a constant feature: every alpha predicts it exactly, R² = 1) goes to the
    # larger alpha, whatever the grid's order
    constant = np.column_stack([np.full(len(qids), 3.0), Y[:, 0]])
    assert choose_alphas(X, constant, qids, [1.0, 100.0, 10.0], 3)[0] == 100.0


def test_inner_folds_are_checked_on_the_folds() -> None:
    from lorascope.analyses.probing.probes import check_inner_folds

    qids = [q for q in "abcdef" for _ in range(3)]
    folds = query_folds(qids, 3)  # 2 queries held out per fold: 4 to train on
    check_inner_folds(qids, folds, 4, [1.0, 10.0])
    check_inner_folds(qids, folds, 5, [1.0])  # one alpha: no inner folds
    with pytest.raises(ValueError, match="'inner_folds' = 5 query-grouped folds need at least "
                                         "5 queries in every outer training fold; fold 0 "
                                         "trains on 4"):
        check_inner_folds(qids, folds, 5, [1.0, 10.0])


def test_folds_keep_queries_apart() -> None:
    rng = np.random.default_rng(1)
    qids = [f"q{i}" for i in range(11) for _ in range(int(rng.integers(1, 9)))]
    qids = [qids[i] for i in rng.permutation(len(qids))]  # pairs of a query not contiguous
    folds = query_folds(qids, 5)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(len(qids)))  # every pair held out once
    groups = np.asarray(qids)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(qids)
    assert [t.tolist() for _, t in query_folds(qids, 5)] == [t.tolist() for _, t in folds]
    with pytest.raises(ValueError, match="'folds' = 5 query-grouped folds need at least 5 "
                                         "queries, the pairs have 3"):
        query_folds(["a", "b", "c", "a"], 5)


# --------------------------------------------------------------------------- features


def test_features_on_a_hand_made_collection() -> None:
    docs = ["Apple banana apple.", "banana cherry", "The cherry date"]  # 'the': a stopword
    stats = CollectionStats.from_texts(docs)
    n, avgdl = 3, (3 + 2 + 2) / 3
    assert (stats.documents, stats.avgdl) == (n, pytest.approx(avgdl))

    def idf(df):
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    query = terms("apple of cherry kiwi")  # 'of' dropped; kiwi in no document
    assert query == ["apple", "cherry", "kiwi"]
    got = pair_features(query, terms(docs[0]), stats)
    norm = 0.9 * (1 - 0.4 + 0.4 * 3 / avgdl)
    assert got["bm25"] == pytest.approx(idf(1) * 2 * 1.9 / (2 + norm))
    assert got["tf"] == 2.0
    assert got["coverage"] == pytest.approx(idf(1) / (idf(1) + idf(2) + idf(0)))
    assert got["length"] == 3.0
    got = pair_features(query, terms(docs[2]), stats)  # cherry once, of length 2
    norm = 0.9 * (1 - 0.4 + 0.4 * 2 / avgdl)
    assert got == pytest.approx({"bm25": idf(2) * 1.9 / (1 + norm), "tf": 1.0,
                                 "coverage": idf(2) / (idf(1) + idf(2) + idf(0)),
                                 "length": 2.0})
    assert pair_features([], terms(docs[0]), stats) == {"bm25": 0.0, "tf": 0.0,
                                                        "coverage": 0.0, "length": 3.0}
    # the matrix: rows in pair order, columns in FEATURES order
    matrix = feature_matrix({"q": "apple cherry kiwi"}, [("q", "d1", docs[0]), ("q", "d3", docs[2])],
                            stats)
    assert matrix.shape == (2, len(FEATURES)) and FEATURES == ("bm25", "tf", "coverage", "length")
    assert matrix[1].tolist() == pytest.approx([got[f] for f in FEATURES])


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "bert"])
def test_features_read_the_passage_the_model_sees(bases, model_type) -> None:
    """The seen part of a passage: all of it when nothing is cut; else a prefix whose tokens
    are the ones the model got (the last, possibly cut word, left out), ending between words."""
    from helpers import toy_pairs

    from lorascope.analyses.probing.features import seen_passages
    from lorascope.models.reranker import encode_pairs, load_reranker

    _, tokenizer, arch = load_reranker(bases[model_type])
    queries, pairs = toy_pairs(n_queries=3, per_query=4, seed=3)
    whole, none_cut = seen_passages(tokenizer, arch, queries, pairs, 10_000)
    assert none_cut == 0 and whole == [t for _, _, t in pairs]
    seen, cut = seen_passages(tokenizer, arch, queries, pairs, 40)
    assert 0 < cut == sum(part != text for (_, _, text), part in zip(pairs, seen))
    for (qid, _, text), part in zip(pairs, seen):
        assert text.startswith(part)
        kept = encode_pairs(tokenizer, arch, [queries[qid]], [text], 40)["input_ids"][0]
        mine = encode_pairs(tokenizer, arch, [queries[qid]], [part], 10_000)["input_ids"][0]
        if part == text:
            assert len(kept) <= 40 and kept.tolist() == mine.tolist()
            continue
        assert len(kept) == 40 and len(mine) <= 40
        assert kept[:len(mine) - 1].tolist() == mine[:-1].tolist()
        assert not part or not (part[-1].isalnum() and text[len(part)].isalnum())
    # the features are those of the seen part
    stats = CollectionStats.from_texts(t for _, _, t in pairs)
    np.testing.assert_array_equal(feature_matrix(queries, pairs, stats, seen),
                                  feature_matrix(queries, [(q, d, t) for (q, d, _), t in
                                                           zip(pairs, seen)], stats))


def test_collection_sources() -> None:
    import pyarrow.parquet as pq

    from lorascope.data.embedded import SOURCE_FILES, _resource

    docids: set[str] = set()
    for name in SOURCE_FILES:
        docids |= set(pq.read_table(str(_resource(f"{name}.candidates.parquet")),
                                    columns=["docid"]).column("docid").to_pylist())
    shipped = shipped_passages()
    assert len(shipped) == len(docids) > 10_000  # each docid once
    # split: the split's unique passages, a docid listed for two queries counted once
    candidates = [("q1", "a", "apple pie"), ("q2", "a", "apple pie"), ("q2", "b", "pie")]
    stats = collection_stats("split", candidates)
    assert (stats.documents, stats.df) == (2, {"apple": 1, "pie": 2})
    with pytest.raises(ValueError, match="'idf' must be one of shipped, split"):
        collection_stats("corpus", candidates)


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "bert"])
def test_states_are_each_pairs_own_forward(bases, tmp_path, model_type) -> None:
    """Batched, padded states == each pair alone through the model: the read token, the
    numbering (layer l = hidden_states[l]) and the decoders' final norm below layer L."""
    import torch
    from helpers import prepare

    from lorascope.core.readout import readout_for, task_model
    from lorascope.analyses.probing.states import collect_states

    model, tokenizer, arch = load_adapted(bases[model_type],
                                          build_adapter(bases[model_type], tmp_path / "a"))
    prepared = prepare(tokenizer, arch, batch_tokens=128)
    got = collect_states(prepared, model, arch, progress=False)
    assert got.check.final_diff < 1e-5 and got.states.shape[:2] == (len(prepared), 3)
    readout, task = readout_for(arch), task_model(model)
    for i in range(0, len(prepared), 5):
        ids = torch.tensor([prepared._features[i]["input_ids"]])
        extra = {k: torch.tensor([v]) for k, v in prepared._features[i].items()
                 if k != "input_ids"}
        with torch.no_grad():
            hidden = model(input_ids=ids, **extra, output_hidden_states=True).hidden_states
            token = -1 if readout.token == "last" else 0
            for layer in range(1, 4):
                state = hidden[layer][0, token]
                if readout.norm is not None and layer < 3:
                    state = task.get_submodule(readout.norm)(state)
                np.testing.assert_allclose(got.states[i, layer - 1], state.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- the stage

STAGE_ARCHS = ["llama", "gpt_neox", "bert"]


@pytest.fixture(scope="module", params=STAGE_ARCHS)
def run(request, bases, tmp_path_factory) -> dict:
    """Three checkpoints of a run of a 3-block model, a toy split, the stage's outputs (LLaMA:
    steps [5] and shipped IDF; the others: every step, the split's IDF)."""
    from lorascope.analyses.probing.stage import probing

    model_type = request.param
    root = tmp_path_factory.mktemp(f"probing-{model_type}")
    base = bases[model_type]
    checkpoints = {s: build_adapter(base, root / f"step-{s}", seed=s) for s in (5, 10, 20)}
    write_toy_split(root / "split", n_queries=8, per_query=8)
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy",
              "steps": [5] if model_type == "llama" else None, "queries": 7, "depth": 6,
              "folds": 3, "inner_folds": 2, "alphas": [1.0, 100.0],
              "idf": "shipped" if model_type == "llama" else "split", "threshold": 0.5,
              "scoring": {"batch_tokens": 256, "max_length": 64}}
    out = {n: root / "out" / n for n in ("probing.parquet", "folds.parquet", "summary.json")}
    given = {5: checkpoints[5], 20: checkpoints[20]} if model_type == "llama" else checkpoints
    summary = probing(params, base, given, root / "split", out["probing.parquet"],
                      out["folds.parquet"], out["summary.json"], progress=False)
    steps = [0, 5] if model_type == "llama" else [0, 5, 10, 20]
    return {"arch": model_type, "params": params, "out": out, "summary": summary,
            "steps": steps, "base": base, "checkpoints": checkpoints, "split": root / "split"}


def test_stage_tables(run) -> None:
    depth, steps = 3, run["steps"]
    rows = read_table(run["out"]["probing.parquet"], PROBING).to_pylist()  # the contract
    assert len(rows) == len(steps) * depth * len(FEATURES)
    assert {(r["step"], r["layer"], r["feature"]) for r in rows} == {
        (s, layer, f) for s in steps for layer in range(1, depth + 1) for f in FEATURES}
    assert {(r["model"], r["adapter"], r["split"], r["idf"]) for r in rows} == {
        ("tiny", "r4-all", "toy", run["params"]["idf"])}
    assert {(r["pairs"], r["queries"], r["folds"]) for r in rows} == {(7 * 6, 7, 3)}
    assert all(math.isfinite(r["r2"]) and r["r2"] <= 1 and r["alpha"] in (1.0, 100.0)
               for r in rows)
    folds = read_table(run["out"]["folds.parquet"], PROBING_FOLDS).to_pylist()
    assert len(folds) == 3 * len(rows)
    for row in rows[:: max(1, len(rows) // 9)]:
        mine = [f for f in folds if (f["step"], f["layer"], f["feature"]) ==
                (row["step"], row["layer"], row["feature"])]
        assert row["r2_fold_mean"] == pytest.approx(np.mean([f["r2"] for f in mine]))
        assert sum(f["test_pairs"] for f in mine) == 42
        assert sum(f["test_queries"] for f in mine) == 7
    assert read_provenance(run["out"]["probing.parquet"])["stage"] == "probing"
    # the base model's states do not depend on the adapter: steps differ, base is LoRA-off
    r2 = {(r["step"], r["layer"], r["feature"]): r["r2"] for r in rows}
    assert any(r2[(0, 3, f)] != r2[(5, 3, f)] for f in FEATURES)


def test_stage_summary(run) -> None:
    summary = json.loads(run["out"]["summary.json"].read_text())
    assert summary == json.loads(json.dumps(run["summary"]))
    assert summary["steps"] == run["steps"] and summary["layers"] == [1, 2, 3]
    assert summary["base"] == {"step": 0, "lora": "every LoRA update switched off",
                               "head_from_step": 20, "original_base": True}
    assert summary["idf"]["source"] == run["params"]["idf"]
    if run["params"]["idf"] == "split":
        # the whole split's passages, not the probed subset's (toy docids are unique)
        assert summary["idf"]["documents"] == 8 * 8
    else:
        assert summary["idf"]["documents"] > 10_000
    cut = summary["subset"].pop("passages_cut")
    assert summary["subset"] == {"queries": 7, "depth": 6, "pairs": 42, "queries_used": 7}
    assert 0 <= cut <= 42 and "max_length = 64" in summary["feature_definitions"]["passage"]
    rows = read_table(run["out"]["probing.parquet"], PROBING).to_pylist()
    for entry in summary["per_step"]:
        assert entry["final_layer_max_rel_diff"] <= 1e-5
        for f in FEATURES:
            curve = {r["layer"]: r["r2"] for r in rows
                     if (r["step"], r["feature"]) == (entry["step"], f)}
            assert entry["r2_by_layer"][f] == pytest.approx([curve[x] for x in (1, 2, 3)],
                                                            abs=1e-6)
            first = entry["readable_from"][f]
            assert all(curve[x] < 0.5 for x in range(1, first or 4))
            assert first is None or curve[first] >= 0.5
            assert curve[entry["best_layer"][f]] == max(curve.values())
    assert summary["provenance"]["params"] == run["params"]


def test_stage_base_is_lora_off(run) -> None:
    """Step 0's probes == the probes of the adapter-free base model's states (LoRA off is the
    base: the states do not depend on the checkpoint, the head only serves the check)."""
    if run["arch"] != "gpt_neox":
        pytest.skip("one architecture is enough")
    from lorascope.analyses.probing.stage import probing

    out = run["out"]["probing.parquet"].parent / "again"
    other = {10: run["checkpoints"][10]}  # another run's last head: same step-0 states
    params = {**run["params"], "steps": [10]}
    probing(params, run["base"], other, run["split"], out / "p.parquet", out / "f.parquet",
            out / "s.json", progress=False)
    a = {(r["layer"], r["feature"]): r["r2"] for r in
         read_table(run["out"]["probing.parquet"], PROBING).to_pylist() if r["step"] == 0}
    b = {(r["layer"], r["feature"]): r["r2"] for r in
         read_table(out / "p.parquet", PROBING).to_pylist() if r["step"] == 0}
    assert a == pytest.approx(b, abs=1e-9)


# --------------------------------------------------------------------------- errors


def test_stage_refuses_bad_params_and_steps(run, tmp_path) -> None:
    if run["arch"] != "llama":
        pytest.skip("one architecture is enough")
    from lorascope.analyses.probing.stage import ProbingSettings, probing

    out = (tmp_path / "p.parquet", tmp_path / "f.parquet", tmp_path / "s.json")
    given = {5: run["checkpoints"][5], 20: run["checkpoints"][20]}
    with pytest.raises(ValueError, match=r"'steps' names \[10\] but no checkpoint directory "
                                         r"was given for them \(given: \[5, 20\]\)"):
        probing({**run["params"], "steps": [10]}, run["base"], given, run["split"], *out,
                progress=False)
    with pytest.raises(ValueError, match="'folds' = 9 query-grouped folds need at least 9"):
        probing({**run["params"], "folds": 9}, run["base"], given, run["split"], *out,
                progress=False)
    with pytest.raises(ValueError, match="step 0 is the base model"):
        probing(run["params"], run["base"], {0: run["checkpoints"][5]}, run["split"], *out,
                progress=False)
    assert not any(p.exists() for p in out)
    bad = [({"alpha": [1.0]}, r"unknown keys \['alpha'\]"),
           ({"alphas": []}, "'alphas' must be a non-empty list of positive numbers"),
           ({"alphas": [0]}, "'alphas' must be a non-empty list"),
           ({"steps": [0, 5]}, "'steps' must be null or a non-empty list of checkpoint steps > 0"),
           ({"steps": [5, 5]}, "'steps' lists a step twice"),
           ({"folds": 1}, "'folds' must be an int >= 2"),
           ({"queries": 0}, "'queries' must be an int >= 1 or null"),
           ({"idf": "corpus"}, "'idf' must be one of shipped, split"),
           ({"threshold": 0}, r"'threshold' must be in \(0, 1\]"),
           ({"scoring": {"batch_size": 8}}, r"unknown keys \['scoring.batch_size'\]")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            ProbingSettings.from_params({**run["params"], **change})
    defaults = ProbingSettings.from_params({"model": "m"})
    assert (defaults.folds, defaults.inner_folds, defaults.idf, defaults.steps,
            defaults.queries, len(defaults.alphas)) == (5, 3, "shipped", None, None, 8)


def test_stage_checks_the_inner_folds_before_loading(run, tmp_path, monkeypatch) -> None:
    if run["arch"] != "llama":
        pytest.skip("one architecture is enough")
    from lorascope.analyses.probing import stage

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stage, "load_run", no_loading)
    out = (tmp_path / "p.parquet", tmp_path / "f.parquet", tmp_path / "s.json")
    given = {5: run["checkpoints"][5], 20: run["checkpoints"][20]}
    # 7 queries in 3 outer folds: 4 or 5 to train on; 5 inner folds do not fit every fold
    with pytest.raises(ValueError, match="'inner_folds' = 5 query-grouped folds need at least "
                                         "5 queries in every outer training fold"):
        stage.probing({**run["params"], "inner_folds": 5}, run["base"], given, run["split"],
                      *out, progress=False)
    with pytest.raises(ValueError, match="'folds' = 9 query-grouped folds need at least 9"):
        stage.probing({**run["params"], "folds": 9}, run["base"], given, run["split"], *out,
                      progress=False)
    assert not any(p.exists() for p in out)


CONFIG = {
    "study": "t",
    "data": {
        "train": {"source": "embedded", "dataset": "dl21"},
        "splits": {
            "validation": {"source": "embedded", "dataset": "dl21", "queries": 8, "depth": 20},
            "dl19": {"source": "embedded", "dataset": "dl19"},
        },
    },
    "models": {"tiny": {"tiny": {"architecture": "llama", "layers": 8, "width": 64}}},
    "training": {"adapters": [{"targets": "all", "ranks": [1, 8]}], "steps": [5, 10]},
}


@pytest.mark.parametrize(("block", "message"), [
    ({"steps": [5, 7]}, ("config key 'analyses.probing.steps[1]': adapter 'r1-all' of model "
                         "'tiny' has no checkpoint at step 7 (its checkpoints: 5, 10)")),
    ({"steps": ["last", 3]}, "config key 'analyses.probing.steps[1]': adapter 'r1-all' of model 'tiny' has no checkpoint at step 3"),
    ({"stpes": [5]}, "config key 'analyses.probing': unknown key 'stpes'"),
    ({"idf": "corpus"}, "config key 'analyses.probing.idf'"),
    ({"folds": 1}, "config key 'analyses.probing.folds'"),
    ({"alphas": [0]}, "config key 'analyses.probing.alphas[0]'"),
    ({"splits": ["dl20"]}, "config key 'analyses.probing.splits[0]': unknown split 'dl20'"),
    ({"adapters": ["r16-all"]}, "config key 'analyses.probing.adapters[0]': no model trains"),
    ({"queries": 3}, ("config key 'analyses.probing.queries': 3 queries cannot fill "
                      "analyses.probing.folds = 5")),
    ({"queries": 6, "folds": 3, "inner_folds": 5},
     ("config key 'analyses.probing.inner_folds': 5 query-grouped inner folds need 5 queries "
      "in every outer training fold, but analyses.probing.queries = 6 in "
      "analyses.probing.folds = 3 folds leaves at most 4")),
])
def test_config_errors_name_the_key(block, message) -> None:
    from lorascope.study.parse import load_study
    from lorascope.study.spec import ConfigError

    raw = copy.deepcopy(CONFIG)
    raw["analyses"] = {"probing": block}
    with pytest.raises(ConfigError) as err:
        load_study(raw)
    assert message in str(err.value)


def test_config_parsed_jobs_and_slices() -> None:
    from lorascope.analyses.probing import study as probing_study
    from lorascope.study import slices
    from lorascope.study.parse import load_study

    raw = copy.deepcopy(CONFIG)
    raw["analyses"] = {"probing": {"adapters": ["r8-all"], "steps": [5], "queries": 20,
                                   "depth": 10}}
    study = load_study(raw)
    assert probing_study.jobs(study) == [{"model": "tiny", "adapter": "r8-all",
                                          "split": "validation"}]
    assert probing_study.checkpoint_steps(study, "tiny", "r8-all") == [5, 10]
    cfg = slices.for_rule("probing")(study, "tiny", "r8-all", "validation")
    assert cfg == {"model": "tiny", "adapter": "r8-all", "split": "validation", "steps": [5],
                   "queries": 20, "depth": 10, "folds": 5, "inner_folds": 3,
                   "alphas": [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6], "idf": "shipped",
                   "threshold": 0.5, "scoring": slices.scoring(study, "tiny")}
    from lorascope.analyses.probing.stage import ProbingSettings

    ProbingSettings.from_params(json.loads(slices.to_json(cfg)))  # the stage accepts it
    raw["analyses"] = {"probing": {}}
    everything = slices.for_rule("probing")(load_study(raw), "tiny", "r1-all", "validation")
    assert everything["steps"] == [5, 10] and everything["queries"] is None


# --------------------------------------------------------------------------- report


def _summary_dir(root: Path, rows: list[dict]) -> Path:
    from lorascope.core.contracts import write_table

    root.mkdir(parents=True, exist_ok=True)
    columns = {name: [r[name] for r in rows] for name in PROBING.columns}
    write_table(root / "probing.parquet", columns, PROBING)
    (root / "study.json").write_text(json.dumps({
        "models": {"tiny": {"label": "Tiny", "mechanics_only": True}},
        "analyses": {"probing": {}}}))
    return root


def test_report_section_renders(tmp_path) -> None:
    from lorascope.analyses.probing.report import items
    from lorascope.report.data import load_inputs
    from lorascope.report.model import Figure, Omitted, Table

    curves = {0: [0.1, 0.3, 0.6], 100: [0.2, 0.7, 0.8]}
    rows = [{"model": "tiny", "adapter": "r8-all", "split": "validation", "step": step,
             "layer": layer, "feature": feature,
             "r2": value if feature == "bm25" else 0.1, "r2_fold_mean": value,
             "r2_fold_std": 0.05, "alpha": 10.0, "folds": 5, "pairs": 400, "queries": 20,
             "idf": "shipped"}
            for step, values in curves.items() for layer, value in enumerate(values, 1)
            for feature in FEATURES]
    inputs = load_inputs(_summary_dir(tmp_path / "summary", rows))
    figure, table = items({"probing": {"threshold": 0.5}}, inputs)
    assert isinstance(figure, Figure) and figure.png.startswith(b"\x89PNG") and figure.pdf
    assert "R² = 0.5" in figure.caption
    assert isinstance(table, Table) and table.key == "table-probing"
    assert [r.label for r in table.rows] == ["base", "100"]
    labels = [[c.label for c in r.cells] for r in table.rows]
    assert labels[0][:2] == ["3 of 3", "not reached"] and labels[1][0] == "2 of 3"
    assert [r.cells[-1].value for r in table.rows] == pytest.approx([0.6, 0.8])
    empty = load_inputs(_summary_dir(tmp_path / "empty", []))
    [omitted] = items({}, empty)
    assert isinstance(omitted, Omitted) and "probing" in omitted.note
