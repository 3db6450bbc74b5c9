"""Length-sorted, token-budget batching: same scores as one pair at a time, little padding."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import (
    OomAbove,
    as_tensor,
    build_adapter,
    build_base,
    load_adapted,
    passages,
    toy_pairs,
)

from lorascope.core.batches import fixed_batches, plan_batches
from lorascope.core.scoring import PreparedPairs, score_candidates

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "gpt_neox", "bert"])
def adapted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"scoring-{request.param}")
    base = build_base(root / "base", request.param)
    adapter = build_adapter(base, root / "adapter")
    model, tokenizer, arch = load_adapted(base, adapter)
    return model, tokenizer, arch


def varied_pairs(n: int, seed: int = 0):
    rng = random.Random(seed)
    queries = {f"q{i}": " ".join(rng.sample(passages(1, seed=i)[0].split(), 2))
               for i in range(n // 20 + 1)}
    texts = passages(n, seed=seed, low=2, high=80)
    return queries, [(f"q{i % len(queries)}", f"d{i}", t) for i, t in enumerate(texts)]


def direct_scores(model, tokenizer, arch, queries, candidates, max_length):
    """The independent path: encode_pairs + forward, one pair at a time."""
    import torch

    from lorascope.models.reranker import encode_pairs, score_logits

    out = {}
    with torch.inference_mode():
        for qid, docid, text in candidates:
            batch = encode_pairs(tokenizer, arch, [queries[qid]], [text], max_length)
            out[(qid, docid)] = float(score_logits(model(**batch).logits)[0])
    return out


def test_sorted_batches_match_one_at_a_time(adapted) -> None:
    """(e) Length-sorted batches == one pair at a time (padding changes nothing)."""
    import torch

    model, tokenizer, arch = adapted
    queries, candidates = varied_pairs(60)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=48,
                                   batch_tokens=512)
    assert len(prepared.batches) < len(candidates) / 4  # real batching happened
    batched = prepared.score(model, progress=False)
    single = prepared.score(model, progress=False, batches=[[i] for i in range(len(prepared))])
    direct = direct_scores(model, tokenizer, arch, queries, candidates, 48)
    assert list(batched) == [(q, d) for q, d, _ in candidates]  # input order
    torch.testing.assert_close(as_tensor(batched), as_tensor(single), atol=1e-5, rtol=0)
    torch.testing.assert_close(as_tensor(batched), as_tensor(direct), atol=1e-5, rtol=0)
    assert max(prepared.lengths) <= 48


def test_padding_ratio_small_on_varied_lengths(adapted) -> None:
    """(e) padded/real <= 1.10 where a fixed-order batcher of similar size pads far more."""
    model, tokenizer, arch = adapted
    queries, candidates = varied_pairs(400, seed=1)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=256,
                                   batch_tokens=2048)
    lengths = prepared.lengths
    assert max(lengths) > 3 * min(lengths)  # the lengths really vary
    assert prepared.padding_ratio <= 1.10
    prepared.score(model, progress=False)
    stats = prepared.last_stats
    assert stats.padding_ratio == pytest.approx(prepared.padding_ratio)
    assert stats.padded_tokens <= 1.10 * stats.real_tokens
    assert stats.pairs == len(candidates) and stats.batches == len(prepared.batches)

    size = round(len(candidates) / len(prepared.batches))
    fixed = fixed_batches(len(candidates), size)
    fixed_padded = sum(len(b) * max(lengths[i] for i in b) for b in fixed)
    assert fixed_padded / prepared.real_tokens > 1.3


def test_plan_batches_properties() -> None:
    rng = random.Random(2)
    lengths = [rng.randint(1, 100) for _ in range(500)] + [300]
    budget = 256
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1
    assert batches[0] == [len(lengths) - 1]  # the over-long pair runs alone, first
    with pytest.raises(ValueError, match="batch_tokens must be >= 1"):
        plan_batches(lengths, 0)
    assert fixed_batches(5, 2) == [[0, 1], [2, 3], [4]]


def test_left_padding_tokenizer_gives_same_scores(adapted) -> None:
    import torch

    model, tokenizer, arch = adapted
    queries, candidates = toy_pairs()
    right = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                batch_tokens=256)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        left = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                   batch_tokens=256)
    finally:
        tokenizer.padding_side = side
    assert left.lengths == right.lengths
    assert torch.equal(as_tensor(left.score(model, progress=False)),
                       as_tensor(right.score(model, progress=False)))


def test_oom_halves_the_budget_and_keeps_it(adapted) -> None:
    import torch

    model, tokenizer, arch = adapted
    queries, candidates = varied_pairs(60, seed=3)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=48,
                                   batch_tokens=1024)
    expected = prepared.score(model, progress=False)
    version = prepared.plan_version
    flaky = OomAbove(model, limit=300)
    got = prepared.score(flaky, progress=False)
    torch.testing.assert_close(as_tensor(got), as_tensor(expected), atol=1e-5, rtol=0)
    assert prepared.batch_tokens == 256 and prepared.last_stats.replans == 2
    assert prepared.plan_version > version
    again = prepared.score(flaky, progress=False)  # the smaller budget stays
    assert prepared.last_stats.replans == 0 and again.keys() == expected.keys()

    tight = OomAbove(model, limit=1)  # not even one pair fits: give up
    with pytest.raises(torch.OutOfMemoryError):
        prepared.score(tight, progress=False)


def test_score_candidates_is_prepare_then_score(adapted) -> None:
    model, tokenizer, arch = adapted
    queries, candidates = toy_pairs()
    once = score_candidates(model, tokenizer, arch, queries, candidates, max_length=64,
                            batch_tokens=256, progress=False)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                   batch_tokens=256)
    assert once == prepared.score(model, progress=False)


def test_input_errors(adapted) -> None:
    model, tokenizer, arch = adapted
    queries, candidates = toy_pairs()
    with pytest.raises(ValueError, match=r"\('q0', 'd0-0'\) appears twice"):
        PreparedPairs.build(tokenizer, arch, queries, candidates + candidates[:1],
                            max_length=64, batch_tokens=256)
    with pytest.raises(ValueError, match="without query text"):
        PreparedPairs.build(tokenizer, arch, {}, candidates, max_length=64, batch_tokens=256)
    if arch.decoder:
        prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                       batch_tokens=256)
        pad = model.config.pad_token_id
        model.config.pad_token_id = pad + 1
        try:
            with pytest.raises(ValueError, match="pad_token_id"):
                prepared.score(model, progress=False)
        finally:
            model.config.pad_token_id = pad
