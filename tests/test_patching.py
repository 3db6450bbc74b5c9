"""Activation patching of axiomatic perturbations on tiny LLaMA / GPT-NeoX / BERT rerankers.

What pins it: each perturbation is deterministic and changes exactly the positions it declares
(BERT and decoder tokenizers); patching no position reproduces the baseline scores bitwise and
patching every position of any block reproduces the perturbed scores (fp32, 1e-5); a
residual patch through the block cache equals a plain run with the same hook, and a head patch
equals a plain run with that head's ``o`` input slice copied (:func:`edited_heads`); the stage's
tables follow their contracts (base step included); config errors name the key; the report
section renders from small tables.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from helpers import build_adapter, load_adapted, toy_pairs, write_toy_split

from lorascope.analyses.patching import PATCHING, PATCHING_HEADS, PATCHING_PAIRS
from lorascope.core.contracts import read_provenance, read_table

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = ["llama", "gpt_neox", "bert"]
#: fp32: patching every position at a block vs the perturbed run's own scores.
ATOL = 1e-5
#: The toy tokenizers have no one-token "the"; "a" is one WordPiece token (BERT) and "Ġ a" in
#: the toy byte-level BPE (so the filler run cycles through two tokens there).
FILLER = "a"
MAX_LENGTH = 48


def _stats(candidates):
    from lorascope.core.termstats import CollectionStats

    return CollectionStats.from_texts({d: t for _, d, t in candidates}.values())


def _build(tokenizer, arch, max_length: int = MAX_LENGTH):
    from lorascope.analyses.patching.perturb import build_perturbations

    queries, candidates = toy_pairs()
    return build_perturbations(tokenizer, arch, queries, candidates, _stats(candidates),
                               filler=FILLER, max_length=max_length)


def _prepared(pset, tokenizer, arch, batch_tokens: int = 200):
    from lorascope.core.scoring import PreparedPairs

    return [PreparedPairs(pset.keys, features, pad_token_id=int(tokenizer.pad_token_id),
                          batch_tokens=batch_tokens, decoder=arch.decoder)
            for features in (pset.baseline, pset.perturbed)]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def adapted(request, bases, tmp_path_factory) -> dict:
    model_type = request.param
    adapter = build_adapter(bases[model_type], tmp_path_factory.mktemp(f"patch-{model_type}"))
    model, tokenizer, arch = load_adapted(bases[model_type], adapter)
    sets, choices = _build(tokenizer, arch)
    return {"model": model, "tokenizer": tokenizer, "arch": arch, "sets": sets,
            "choices": choices, "type": model_type}


# --------------------------------------------------------------------------- perturbations


#: A cut-off that truncates most toy pairs once a term is inserted (the toy BPE spends ~20
#: tokens on the decoders' prompt words).
SHORT = {"bert": 12, "llama": 32}


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("short", [False, True])
def test_perturbations_change_exactly_what_they_declare(bases, model_type, short) -> None:
    """Baseline and perturbed ids have equal lengths and differ at exactly the declared
    ``changed`` positions, all inside the ``injected`` group; the groups partition the
    positions; building twice gives identical ids (also when insertions hit max_length)."""
    from lorascope.analyses.patching.perturb import GROUPS, filler_run, mid_text_ids
    from lorascope.models.reranker import load_reranker

    max_length = SHORT[model_type] if short else MAX_LENGTH
    _, tokenizer, arch = load_reranker(str(bases[model_type]))
    sets, choices = _build(tokenizer, arch, max_length)
    again, _ = _build(tokenizer, arch, max_length)
    filler = mid_text_ids(tokenizer, [FILLER])[0]
    seen_change = 0
    for name, pset in sets.items():
        assert len(pset) > 0, name
        assert pset.keys == again[name].keys and pset.groups == again[name].groups
        assert pset.baseline == again[name].baseline and pset.perturbed == again[name].perturbed
        for base, pert, changed, groups in zip(pset.baseline, pset.perturbed, pset.changed,
                                               pset.groups):
            b, p = base["input_ids"], pert["input_ids"]
            assert len(b) == len(p) <= max_length
            assert base.get("token_type_ids") == pert.get("token_type_ids")
            differ = [i for i, (x, y) in enumerate(zip(b, p)) if x != y]
            assert differ == list(changed) and differ, name
            seen_change += len(differ)
            injected = set(groups["injected"])
            assert set(changed) <= injected
            assert sorted(i for g in GROUPS for i in groups[g]) == list(range(len(b)))
            assert groups["scoring"] == ((len(b) - 1,) if arch.decoder else (0,))
            if name != "query_term_removal":  # the baseline's span is filler
                assert [b[i] for i in sorted(injected)] == filler_run(filler, len(injected))
    assert seen_change
    lengths = [len(f["input_ids"]) for f in sets["tfc1"].perturbed]
    assert max(lengths) == max_length or not short  # the cut-off was hit
    for choice in choices.values():  # the control: same token count, not a query term
        assert len(choice.control_ids) == len(choice.ids) > 0
        assert choice.control != choice.term and choice.control.isalpha() == choice.term.isalpha()


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_perturbation_contents(bases, model_type) -> None:
    """tfc1 = the clean pair with the highest-IDF query term's tokens at the passage start;
    query-term removal starts from the clean pair (encode_pairs' ids) and puts filler on the
    tokens covering the term's occurrences in the passage text."""
    from lorascope.analyses.patching.perturb import (
        encode_clean,
        filler_run,
        mid_text_ids,
        word_spans,
    )
    from lorascope.core.termstats import terms
    from lorascope.models.reranker import load_reranker

    _, tokenizer, arch = load_reranker(str(bases[model_type]))
    queries, candidates = toy_pairs()
    stats = _stats(candidates)
    sets, choices = _build(tokenizer, arch)
    clean = dict(zip([c[:2] for c in candidates],
                     encode_clean(tokenizer, arch, queries, candidates, MAX_LENGTH)))
    filler = mid_text_ids(tokenizer, [FILLER])[0]
    for qid, choice in choices.items():
        words = terms(queries[qid])
        present = [w for w in words if stats.df.get(w, 0)]
        assert choice.term == max(present, key=lambda w: (stats.idf(w), -present.index(w)))
        assert choice.spelling == choice.term  # the toy queries are lower-case
        assert list(choice.ids) == mid_text_ids(tokenizer, [choice.term])[0]
        # the control, by brute force: same kind and token count, closest IDF, alphabetical
        pool = [t for t in sorted(stats.df) if t not in words
                and len(mid_text_ids(tokenizer, [t])[0]) == len(choice.ids)]
        assert choice.control == min(pool, key=lambda t: (abs(stats.idf(t) - choice.idf), t))
    tfc1 = sets["tfc1"]
    for key, pert, groups in zip(tfc1.keys, tfc1.perturbed, tfc1.groups):
        ids, span = pert["input_ids"], groups["injected"]
        assert [ids[i] for i in span] == list(choices[key[0]].ids)
        if len(clean[key].ids) + len(span) <= MAX_LENGTH:  # nothing cut: the clean pair back
            assert ids[: span[0]] + ids[span[-1] + 1:] == list(clean[key].ids)
            assert set(clean[key].labels[span[0]:]) <= {"passage", "other"}
    removal = sets["query_term_removal"]
    for key, base, pert, groups in zip(removal.keys, removal.baseline, removal.perturbed,
                                       removal.groups):
        pair = clean[key]
        assert base["input_ids"] == list(pair.ids)
        span = list(groups["injected"])
        occurrences = word_spans(pair.passage, choices[key[0]].term)
        covering = sorted({i for b, e in occurrences for i, sp in enumerate(pair.spans)
                           if pair.labels[i] == "passage" and sp and sp[0] < e and sp[1] > b})
        assert span and span == covering
        runs = [[span[0]]]
        for i in span[1:]:
            runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i])
        for r in runs:
            assert [pert["input_ids"][i] for i in r] == filler_run(filler, len(r))
    assert sum(removal.skipped.values()) + len(removal) == len(candidates)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_case_sensitive_term_removal(bases, model_type) -> None:
    """The term is found in the passage text whole-word and case-insensitively ("Castle",
    "(castle,", "CASTLE", not "castles") and exactly the tokens covering it become filler,
    also for the case-sensitive byte-level BPE; tfc1 inserts the query's spelling; a query
    word no passage contains is not chosen; a decoder's last token that is injected leaves
    its pair without a scoring position, and is counted."""
    from lorascope.analyses.patching.perturb import (
        build_perturbations,
        encode_clean,
        filler_run,
        load_tokenizer,
        mid_text_ids,
    )
    from lorascope.core.termstats import CollectionStats, terms

    tokenizer, arch = load_tokenizer(bases[model_type])
    assert arch.decoder == (model_type != "bert")
    queries = {"q0": "Castle volunterilay", "q1": "volunterilay"}
    candidates = [("q0", "d0", "the old Castle stood (castle, CASTLE) near castles river."),
                  ("q0", "d1", "apple river stone."),
                  ("q0", "d2", "green river Castle"),
                  ("q1", "d0", "the old Castle stood (castle, CASTLE) near castles river.")]
    stats = CollectionStats.from_texts({d: t for _, d, t in candidates}.values())
    sets, choices = build_perturbations(tokenizer, arch, queries, candidates, stats,
                                        filler=FILLER, max_length=256)
    choice = choices["q0"]
    assert (choice.term, choice.spelling) == ("castle", "Castle")  # not "volunterilay" (df 0)
    assert list(choice.ids) == mid_text_ids(tokenizer, ["Castle"])[0]
    assert choices["q1"].term is None
    assert choices["q1"].to_dict()["reason"] == "no query term occurs in the split's passages"
    tfc1 = sets["tfc1"]
    assert [k for k in tfc1.keys] == [("q0", "d0"), ("q0", "d1"), ("q0", "d2")]
    for pert, groups in zip(tfc1.perturbed, tfc1.groups):
        assert [pert["input_ids"][i] for i in groups["injected"]] == list(choice.ids)
    removal = sets["query_term_removal"]
    assert removal.keys == [("q0", "d0"), ("q0", "d2")]
    assert removal.skipped == {"passage lacks the query term": 1,
                               "no query term occurs in the split's passages": 1}
    filler = mid_text_ids(tokenizer, [FILLER])[0]
    clean = dict(zip([c[:2] for c in candidates],
                     encode_clean(tokenizer, arch, queries, candidates, 256)))
    for key, base, pert, groups in zip(removal.keys, removal.baseline, removal.perturbed,
                                       removal.groups):
        pair = clean[key]
        assert base["input_ids"] == list(pair.ids)
        runs = [[groups["injected"][0]]]
        for i in groups["injected"][1:]:
            runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i])
        # each run of replaced tokens covers one occurrence (any case, after punctuation)
        covered = [pair.passage[pair.spans[r[0]][0]:pair.spans[r[-1]][1]] for r in runs]
        assert [terms(text) for text in covered] == [["castle"]] * len(runs)
        assert len(runs) == (3 if key[1] == "d0" else 1)
        assert [[pert["input_ids"][i] for i in r] for r in runs] == [
            filler_run(filler, len(r)) for r in runs]
        # "castles" and the other words keep their tokens
        at = pair.passage.find("castles")
        kept = [i for i, sp in enumerate(pair.spans) if sp and sp[0] < at + 7 and sp[1] > at]
        assert at < 0 or (kept and not set(kept) & set(groups["injected"]))
    last = len(removal.baseline[1]["input_ids"]) - 1  # d2 ends with the term
    if arch.decoder:
        assert removal.groups[1]["scoring"] == () and last in removal.groups[1]["injected"]
        assert removal.scoring_injected == 1
    else:
        assert removal.scoring_injected == 0


def _refuse_model_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the cheap checks")


def test_cheap_errors_before_the_model(bases, tmp_path, monkeypatch) -> None:
    """A filler without tokens fails while only the tokenizer is loaded."""
    import lorascope.models.adapted
    from lorascope.analyses.patching.stage import patching

    adapter = build_adapter(bases["bert"], tmp_path / "step-10")
    write_toy_split(tmp_path / "split")
    monkeypatch.setattr(lorascope.models.adapted, "load_adapted", _refuse_model_load)
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "queries": 2, "depth": 3,
              "filler": "\u00ad", "scoring": {"batch_tokens": 256, "max_length": 64}}
    out = [tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet", "s.json")]
    with pytest.raises(ValueError, match="encodes to no tokens"):
        patching(params, bases["bert"], {10: adapter}, tmp_path / "split", *out,
                 progress=False)
    assert not any(p.exists() for p in out)


def test_stage_refuses_checkpoints_of_different_runs(bases, tmp_path) -> None:
    from lorascope.analyses.patching.stage import patching

    checkpoints = {5: build_adapter(bases["llama"], tmp_path / "step-5"),
                   10: build_adapter(bases["llama"], tmp_path / "step-10", use_dora=True)}
    write_toy_split(tmp_path / "split")
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "steps": [5, 10],
              "queries": 2, "depth": 3, "filler": FILLER,
              "scoring": {"batch_tokens": 256, "max_length": 64}}
    out = [tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet", "s.json")]
    with pytest.raises(ValueError, match="different adapter configs"):
        patching(params, bases["llama"], checkpoints, tmp_path / "split", *out,
                 progress=False)
    assert not any(p.exists() for p in out)


# --------------------------------------------------------------------------- patching


def test_patch_nothing_and_everything(adapted) -> None:
    """Patching no position reproduces the baseline bitwise (block cache); patching every
    position at any block reproduces the perturbed scores; the groups of the stage split the
    change (at the last block only the scoring token matters)."""
    from lorascope.analyses.patching.patch import patch_scores
    from lorascope.analyses.patching.perturb import GROUPS

    model, tokenizer, arch = adapted["model"], adapted["tokenizer"], adapted["arch"]
    pset = adapted["sets"]["tfc1"]
    baseline, perturbed = _prepared(pset, tokenizer, arch)
    assert len(baseline.batches) > 1
    groups = [dict(g, none=(), every=tuple(range(len(f["input_ids"]))))
              for g, f in zip(pset.groups, pset.baseline)]
    names = [*GROUPS, "none", "every"]
    scores = patch_scores(model, arch, baseline, perturbed, groups, names, heads=False,
                          progress=False)
    own = baseline.score(model, progress=False)
    assert np.array_equal(scores.baseline, [own[k] for k in pset.keys])
    own = perturbed.score(model, progress=False)
    np.testing.assert_allclose(scores.perturbed, [own[k] for k in pset.keys], atol=ATOL, rtol=0)
    assert np.abs(scores.delta).max() > 1e-4  # the test could fail
    depth = scores.residual.shape[0]
    for layer in range(depth):
        assert np.array_equal(scores.residual[layer, names.index("none")], scores.baseline)
        np.testing.assert_allclose(scores.residual[layer, names.index("every")],
                                   scores.perturbed, atol=ATOL, rtol=0, err_msg=f"{layer}")
    last = scores.residual[depth - 1]
    np.testing.assert_allclose(last[names.index("scoring")], scores.perturbed, atol=ATOL, rtol=0)
    for g in ("query", "passage", "injected", "other"):
        assert np.array_equal(last[names.index(g)], scores.baseline), g
    # patching the injected tokens early carries part of the change
    assert np.abs(scores.residual[0, names.index("injected")] - scores.baseline).max() > 1e-6


def test_cached_patch_equals_plain_run(adapted) -> None:
    """A residual patch through the block cache == the same hook on a plain full pass."""
    import torch

    from lorascope.analyses.patching.patch import _hidden, _with_hidden, patch_scores
    from lorascope.core.prefix import blocks

    model, tokenizer, arch = adapted["model"], adapted["tokenizer"], adapted["arch"]
    pset = adapted["sets"]["length_control"]
    baseline, perturbed = _prepared(pset, tokenizer, arch)
    layer = 1
    scores = patch_scores(model, arch, baseline, perturbed, pset.groups, ["injected"],
                          heads=False, progress=False)
    layer_modules = blocks(model, arch)
    manual = []
    for batch in baseline.batches:
        kept: list = []
        handle = layer_modules[layer].register_forward_hook(
            lambda m, a, out, _kept=kept: _kept.append(_hidden(out)))
        perturbed.score(model, progress=False, batches=[batch])
        handle.remove()
        width = max(baseline.lengths[i] for i in batch)
        mask = torch.zeros((len(batch), width, 1), dtype=torch.bool)
        for row, i in enumerate(batch):
            mask[row, list(pset.groups[i]["injected"]), 0] = True
        handle = layer_modules[layer].register_forward_hook(
            lambda m, a, out, _mask=mask, _kept=kept: _with_hidden(
                out, torch.where(_mask, _kept[0], _hidden(out))))
        values = baseline.score(model, progress=False, batches=[batch])
        handle.remove()
        manual += [(i, values[baseline.keys[i]]) for i in batch]
    expected = np.array([v for _, v in sorted(manual)])
    np.testing.assert_allclose(scores.residual[layer, 0], expected, atol=1e-6, rtol=0)


def test_head_patch_equals_manual_edit(adapted) -> None:
    """Head h of block l patched by the stage == a plain run (no block cache) whose ``o``
    input slice of that head is copied from the perturbed run with edited_heads."""
    from lorascope.analyses.patching.patch import patch_scores
    from lorascope.core.heads import edited_heads, head_layout, recorded_head_outputs

    model, tokenizer, arch = adapted["model"], adapted["tokenizer"], adapted["arch"]
    pset = adapted["sets"]["tfc1"]
    baseline, perturbed = _prepared(pset, tokenizer, arch)
    layout = head_layout(model, arch)
    scores = patch_scores(model, arch, baseline, perturbed, pset.groups, ["injected"],
                          heads=True, progress=False)
    assert scores.heads is not None
    assert scores.heads.shape == (layout.layers, layout.heads, len(pset))
    for layer, head in [(0, 0), (1, layout.heads - 1), (layout.layers - 1, 1)]:
        cols = layout.columns(head)
        manual = np.full(len(pset), np.nan)
        for batch in baseline.batches:
            with recorded_head_outputs(model, arch, [layer]) as recorded:
                perturbed.score(model, progress=False, batches=[batch])
            source = recorded[layer][0]

            def edit(_layer, x, _source=source, _cols=cols):
                x = x.clone()
                x[..., _cols] = _source[..., _cols]
                return x

            with edited_heads(model, arch, edit, [layer]):
                values = baseline.score(model, progress=False, batches=[batch])
            manual[batch] = [values[baseline.keys[i]] for i in batch]
        np.testing.assert_allclose(scores.heads[layer, head], manual, atol=1e-6, rtol=0)
        assert np.abs(manual - scores.baseline).max() > 0  # the head matters


def test_unequal_plans_refused(adapted) -> None:
    from lorascope.analyses.patching.patch import patch_scores

    tokenizer, arch = adapted["tokenizer"], adapted["arch"]
    sets = adapted["sets"]
    base, _ = _prepared(sets["tfc1"], tokenizer, arch)
    _, other = _prepared(sets["tfc1"], tokenizer, arch, batch_tokens=100)
    with pytest.raises(ValueError, match="batch plan"):
        patch_scores(adapted["model"], arch, base, other, sets["tfc1"].groups, ["query"],
                     heads=False, progress=False)


# --------------------------------------------------------------------------- stage


@pytest.fixture(scope="module", params=ARCHITECTURES)
def run(request, bases, tmp_path_factory) -> dict:
    """A two-checkpoint run of a tiny model, a toy split and the
    stage's outputs for the default steps (the last checkpoint)."""
    from lorascope.analyses.patching.stage import patching

    model_type = request.param
    root = tmp_path_factory.mktemp(f"patching-stage-{model_type}")
    base = bases[model_type]
    checkpoints = {}
    for step in (5, 10):
        checkpoints[step] = build_adapter(base, root / f"step-{step}", seed=step)
    write_toy_split(root / "split")
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "steps": None,
              "queries": 3, "depth": 5, "filler": FILLER,
              "scoring": {"batch_tokens": 256, "max_length": 64}}
    out = {n: root / "out" / n for n in ("patching.parquet", "heads.parquet", "pairs.parquet",
                                         "summary.json")}
    summary = patching(params, base, checkpoints, root / "split", *out.values(),
                       progress=False)
    return {"out": out, "summary": summary, "params": params, "base": base,
            "checkpoints": checkpoints, "split": root / "split", "type": model_type}


def test_stage_tables(run) -> None:
    from lorascope.analyses.patching.patch import share
    from lorascope.analyses.patching.perturb import GROUPS

    rows = read_table(run["out"]["patching.parquet"], PATCHING).to_pylist()
    heads = read_table(run["out"]["heads.parquet"], PATCHING_HEADS).to_pylist()
    pairs = read_table(run["out"]["pairs.parquet"], PATCHING_PAIRS).to_pylist()
    depth = 3
    perturbations = {r["perturbation"] for r in rows}
    assert {r["step"] for r in rows} == {0, 10}  # the base model and the last checkpoint
    assert perturbations <= {"tfc1", "query_term_removal", "length_control"}
    assert {"tfc1", "length_control"} <= perturbations
    assert {(r["model"], r["adapter"], r["split"]) for r in rows} == {("tiny", "r4-all", "toy")}
    for step in (0, 10):
        for p in perturbations:
            cells = {(r["layer"], r["group"]) for r in rows
                     if (r["step"], r["perturbation"]) == (step, p)}
            assert cells == {(layer, g) for layer in range(depth) for g in GROUPS}
    assert {r["perturbation"] for r in heads} == {"tfc1"}
    assert {(r["step"], r["layer"], r["head"]) for r in heads} == {
        (s, layer, h) for s in (0, 10) for layer in range(depth) for h in range(4)}
    # every share is recomputed from the per-pair scores
    by_site: dict = {}
    for r in pairs:
        by_site.setdefault((r["step"], r["perturbation"], r["site"], r["layer"], r["unit"]),
                           []).append(r["score"])
    for r in rows[::7] + heads[::5]:
        site, unit = ("residual", r["group"]) if "group" in r else ("head", str(r["head"]))
        key = (r["step"], r["perturbation"])
        base = np.array(by_site[(*key, "baseline", -1, "")])
        pert = np.array(by_site[(*key, "perturbed", -1, "")])
        patched = np.array(by_site[(*key, site, r["layer"], unit)])
        assert len(base) == r["pairs"]
        assert r["mean_delta"] == pytest.approx(float(np.mean(pert - base)))
        expected = share(patched, base, pert)
        assert r["share"] == pytest.approx(expected, nan_ok=True)
    # the last block's scoring-token patch carries the whole change
    for r in rows:
        if (r["layer"], r["group"]) == (depth - 1, "scoring") and not np.isnan(r["share"]):
            assert r["share"] == pytest.approx(1.0, abs=1e-3)
    assert read_provenance(run["out"]["patching.parquet"])["stage"] == "patching"


def test_stage_base_step_is_lora_off(run) -> None:
    """Step 0's baseline scores == the last checkpoint with every LoRA update off."""
    from contextlib import nullcontext

    from lorascope.analyses.patching.perturb import build_perturbations
    from lorascope.core.switching import lora_modules, zeroed
    from lorascope.data.splits import read_split, subset

    pairs = read_table(run["out"]["pairs.parquet"], PATCHING_PAIRS).to_pylist()
    model, tokenizer, arch = load_adapted(run["base"], run["checkpoints"][10])
    queries, candidates, qrels = read_split(run["split"])
    chosen = subset(candidates, qrels, queries=3, depth=5)
    sets, _ = build_perturbations(tokenizer, arch, queries, chosen, _stats(candidates),
                                  names=["tfc1"], filler=FILLER, max_length=64)
    baseline, _ = _prepared(sets["tfc1"], tokenizer, arch, batch_tokens=256)
    for step in (0, 10):
        off = zeroed(model, arch, set(lora_modules(model, arch))) if step == 0 else nullcontext()
        with off:
            own = baseline.score(model, progress=False)
        got = {(r["qid"], r["docid"]): r["score"] for r in pairs
               if (r["step"], r["perturbation"], r["site"]) == (step, "tfc1", "baseline")}
        assert got == pytest.approx(own, abs=1e-6)


def test_stage_summary(run) -> None:
    summary = json.loads(run["out"]["summary.json"].read_text())
    assert summary == json.loads(json.dumps(run["summary"]))
    assert summary["steps"] == [0, 10]
    assert summary["base"] == {"step": 0, "lora": "every LoRA update switched off",
                               "head_from_step": 10, "original_base": True}
    assert summary["pairs"]["queries"] == 3 and summary["pairs"]["candidates"] == 15
    assert set(summary["terms"]) == {"q0", "q1", "q2"}
    for name, entry in summary["perturbations"].items():
        assert entry["pairs"] + sum(entry["skipped"].values()) == 15, name
        assert entry["scoring_injected"] >= 0
    assert summary["pairs"]["queries_without_term"] == {}
    assert all(t["spelling"] == t["term"] for t in summary["terms"].values())
    assert summary["per_step"][0]["timing"]["swap_seconds"] == 0.0
    for entry in summary["per_step"]:
        tfc1 = entry["perturbations"]["tfc1"]
        assert len(tfc1["top_heads"]) == 5
        shares = [h["share"] for h in tfc1["top_heads"]]
        assert shares == sorted(shares, reverse=True)
        assert entry["timing"]["tfc1"]["heads"] > 0
    assert summary["provenance"]["params"] == run["params"]
    assert summary["scoring"]["precision"] == "fp32"


def test_stage_refuses_a_missing_step(run, tmp_path) -> None:
    from lorascope.analyses.patching.stage import patching

    out = [tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet", "s.json")]
    params = {**run["params"], "steps": [7]}
    with pytest.raises(ValueError, match=r"analyses\.patching params: 'steps' names \[7\] "
                                         r"but no checkpoint directory was given for them "
                                         r"\(given: \[5, 10\]\)"):
        patching(params, run["base"], run["checkpoints"], run["split"], *out, progress=False)
    assert not any(p.exists() for p in out)


def test_params_checks() -> None:
    from lorascope.analyses.patching.stage import PatchingSettings

    s = PatchingSettings.from_params({"model": "m"})
    assert (s.steps, s.queries, s.depth, s.heads, s.filler, s.tiny_delta) == (
        None, 10, 10, ("tfc1",), "the", 0.01)
    assert s.perturbations == ("tfc1", "query_term_removal", "length_control")
    for params, message in [
        ({"step": [1]}, r"analyses.patching: unknown keys \['step'\]"),
        ({"steps": [0]}, r"analyses.patching.steps must be a non-empty list"),
        ({"queries": 0}, r"analyses.patching.queries must be a positive int"),
        ({"perturbations": ["tfc2"]}, r"analyses.patching.perturbations: unknown"),
        ({"perturbations": ["length_control"]}, r"analyses.patching.heads names \['tfc1'\]"),
        ({"filler": "two words"}, r"analyses.patching.filler must be one word"),
        ({"tiny_delta": -1}, r"analyses.patching.tiny_delta must be a number >= 0"),
        ({"scoring": {"batch": 1}}, r"unknown keys \['scoring.batch'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            PatchingSettings.from_params(params)


# --------------------------------------------------------------------------- study


BASE = {
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


def _study(block):
    from lorascope.study.parse import load_study

    raw = copy.deepcopy(BASE)
    raw["analyses"] = {"patching": block}
    return load_study(raw)


def test_study_block_jobs_and_slice() -> None:
    from lorascope.analyses.patching.study import jobs, patching, report_params

    study = _study({"adapters": ["r8-all"], "splits": ["dl19"]})
    spec = study.analysis("patching")
    assert (spec.steps, spec.queries, spec.depth, spec.heads, spec.filler) == (
        None, 10, 10, ("tfc1",), "the")
    assert jobs(study) == [{"model": "tiny", "adapter": "r8-all", "split": "dl19"}]
    cfg = patching(study, "tiny", "r8-all", "dl19")
    assert cfg["steps"] == [10] and cfg["scoring"]["batch_tokens"] == 16384
    assert report_params(study) is None
    study = _study({"steps": [5], "queries": 3, "depth": 4, "heads": []})
    assert study.analysis("patching").splits == ("validation",)  # the convergence split
    cfg = patching(study, "tiny", "r1-all", "validation")
    assert (cfg["steps"], cfg["queries"], cfg["depth"], cfg["heads"]) == ([5], 3, 4, [])
    from lorascope.analyses.patching.stage import PatchingSettings

    PatchingSettings.from_params(cfg)  # the slice is what the stage accepts
    from lorascope.study.parse import load_study

    assert load_study(BASE).analysis("patching") is None


@pytest.mark.parametrize(("block", "expected"), [
    ({"steps": [7]}, ("config key 'analyses.patching.steps[0]': adapter 'r1-all' of model "
                      "'tiny' has no checkpoint at step 7 (its checkpoints: 5, 10)")),
    ({"splits": ["dev"]}, "config key 'analyses.patching.splits[0]': unknown split 'dev'"),
    ({"adapters": ["r16-all"]}, "config key 'analyses.patching.adapters[0]'"),
    ({"heads": ["query_term_removal"], "perturbations": ["tfc1"]},
     "config key 'analyses.patching.heads[0]'"),
    ({"perturbations": ["tfc2"]}, "analyses.patching.perturbations"),
    ({"filler": "two words"}, "analyses.patching.filler"),
    ({"depth": 0}, "analyses.patching.depth"),
])
def test_config_errors_name_the_key(block, expected) -> None:
    from lorascope.study.spec import ConfigError

    with pytest.raises(ConfigError) as error:
        _study(block)
    assert expected in str(error.value)


# --------------------------------------------------------------------------- report


def _report_inputs(tmp_path: Path):
    import pandas as pd

    from lorascope.report.data import load_inputs

    inputs = load_inputs(tmp_path)  # an empty summary: every table empty
    layers, heads = [], []
    run = {"model": "tiny", "adapter": "r8-all", "split": "dl19"}
    for step in (0, 10):
        for p in ("tfc1", "length_control"):
            for layer in range(2):
                for g in ("query", "passage", "injected", "scoring", "other"):
                    layers.append({**run, "step": step, "perturbation": p, "layer": layer,
                                   "group": g, "share": 0.1 * layer + 0.01 * step,
                                   "mean_delta": 0.5, "mean_abs_delta": 0.5, "pairs": 4,
                                   "tiny": p == "length_control"})
        for layer in range(2):
            for head in range(3):
                heads.append({**run, "step": step, "perturbation": "tfc1", "layer": layer,
                              "head": head, "share": {(0, 0, 10): 0.9, (1, 2, 10): 0.5}.get(
                                  (layer, head, step), 0.1 * layer + 0.01 * head),
                              "mean_delta": 0.25 if step else 0.125, "mean_abs_delta": 0.5,
                              "pairs": 4, "tiny": False})
    inputs.tables["patching"] = pd.DataFrame(layers)
    inputs.tables["patching_heads"] = pd.DataFrame(heads)
    return inputs


def test_report_section_renders(tmp_path) -> None:
    from lorascope.analyses.patching.report import items
    from lorascope.report.model import Figure, Omitted, Table

    out = items({"models": ["tiny"]}, _report_inputs(tmp_path))
    figures = [i for i in out if isinstance(i, Figure)]
    assert [f.key for f in figures] == ["patching", "patching-heads"]
    assert all(f.png.startswith(b"\x89PNG") for f in figures)
    (table,) = [i for i in out if isinstance(i, Table)]
    assert table.key == "table-patching-heads" and [r.label for r in table.rows] == ["base",
                                                                                    "10"]
    base, trained = (r.cells for r in table.rows)
    # base: block 1 heads 2, 1, 0 (0.12, 0.11, 0.1); step 10: head 0.0 (0.9), 1.2 (0.5), 1.1
    assert base[0].label == "1.2: 0.12, 1.1: 0.11, 1.0: 0.10"
    assert trained[0].label == "0.0: 0.90, 1.2: 0.50, 1.1: 0.11"
    assert trained[1].value == pytest.approx(1.51) and trained[2].value == 0.25
    assert table.columns[1].label == "sum of the top-3 single-head shares"
    assert "not a joint patch" in table.caption
    assert any("not additive" in n for n in table.notes)
    from lorascope.report.data import load_inputs

    empty = items({"models": ["tiny"]}, load_inputs(tmp_path))
    assert len(empty) == 1 and isinstance(empty[0], Omitted)
    assert "Activation patching not produced" in empty[0].note
