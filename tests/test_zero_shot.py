"""The zero-shot row: a base model's own ranking (a bi-encoder's cosine), before any LoRA."""

from __future__ import annotations

import json

import pytest
from helpers import build_base, check_run_file, split_qrels, write_toy_split

from lorascope.core.contracts import METRICS, read_table

pytestmark = pytest.mark.usefixtures("one_thread")

MEASURES = ["nDCG@10", "RR(rel=2)"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-shot")
    base = build_base(root / "base", "bert", layers=2)
    queries, candidates = write_toy_split(root / "split")
    return {"root": root, "base": base, "split": root / "split", "queries": queries,
            "candidates": candidates}


def _params(**overrides) -> dict:
    return {"model": "tiny-bert", "split": "toy", "metrics": MEASURES,
            "zero_shot": {"method": "bi_encoder", "pooling": "mean", "max_length": 64},
            "scoring": {"batch_tokens": 256, "precision": "fp32"}, **overrides}


def test_bi_encoder_cosine_of_mean_pooled_embeddings(bert, tmp_path) -> None:
    """The ranking is the cosine of each text embedded alone, mean-pooled over its tokens: the
    stage's batched scores equal one-text-at-a-time embeddings (pads ignored)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lorascope.zero_shot import embed, evaluate_zero_shot

    summary = evaluate_zero_shot(_params(), bert["base"], bert["split"],
                                 tmp_path / "metrics.parquet", tmp_path / "summary.json",
                                 progress=False)
    assert summary["queries"] == 5 and summary["pairs"] == 40
    assert set(summary["metrics"]) == set(MEASURES)
    table = read_table(tmp_path / "metrics.parquet", METRICS).to_pylist()
    assert {r["ablation"] for r in table} == {"zero_shot"} and len(table) == 5 * len(MEASURES)
    assert json.loads((tmp_path / "summary.json").read_text())["method"]["pooling"] == "mean"
    # the TREC run beside the metrics: trec_eval on it gives the reported values, bitwise
    reported = {m: {r["qid"]: r["value"] for r in table if r["measure"] == m} for m in MEASURES}
    run = check_run_file(tmp_path / "zero_shot.run", "tiny-bert.zero_shot.toy",
                         split_qrels(bert["split"]), reported)
    assert sum(len(docs) for docs in run.values()) == 40

    tokenizer = AutoTokenizer.from_pretrained(bert["base"])
    model = AutoModel.from_pretrained(bert["base"]).eval()
    texts = [bert["queries"]["q0"], bert["candidates"][0][2], bert["candidates"][1][2]]
    batched = embed(model, tokenizer, texts, pooling="mean", max_length=64, batch_tokens=4096,
                    device="cpu", progress=False)
    for i, text in enumerate(texts):
        enc = tokenizer([text], truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            alone = model(**enc).last_hidden_state[0].mean(0)
        alone = torch.nn.functional.normalize(alone, dim=-1)
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


def test_bad_method_is_a_clear_error(bert, tmp_path) -> None:
    from lorascope.zero_shot import evaluate_zero_shot

    with pytest.raises(ValueError, match="zero_shot.method must be one of bi_encoder"):
        evaluate_zero_shot(_params(zero_shot={"method": "cross"}), bert["base"], bert["split"],
                           tmp_path / "m.parquet", tmp_path / "s.json", progress=False)
    assert not (tmp_path / "m.parquet").exists() and not (tmp_path / "zero_shot.run").exists()
