"""TREC run files (lorascope.core.trec): trec_eval's order, exact scores, tags, atomic writes,
errors naming the file and line; and the exactness guarantee on a run built to be awkward
(ties, unjudged and missing documents, an unranked judged query), checked with a plain-Python
trec_eval and with pytrec_eval against lorascope's metrics."""

from __future__ import annotations

import random
import struct

import pyarrow as pa
import pytest
from helpers import check_run_file, parse_trec_run, pytrec_eval_measures, reference_trec_eval

from lorascope.core import metrics, trec

MEASURES = ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]


def test_order_is_score_descending_then_docid_descending() -> None:
    hits = [("d1", 0.5), ("d3", 1.0), ("d2", 1.0), ("d10", 1.0), ("d0", -2.0)]
    assert trec.trec_order(hits) == [("d3", 1.0), ("d2", 1.0), ("d10", 1.0), ("d1", 0.5),
                                     ("d0", -2.0)]


def test_run_lines_ranks_queries_and_tag() -> None:
    scores = {("q2", "a"): 1.0, ("q10", "b"): 3.0, ("q2", "b"): 1.0, ("q2", "c"): 2.5}
    assert list(trec.run_lines(scores, "m.a.step-3.s.full")) == [
        "q10 Q0 b 1 3.0 m.a.step-3.s.full\n",
        "q2 Q0 c 1 2.5 m.a.step-3.s.full\n",
        "q2 Q0 b 2 1.0 m.a.step-3.s.full\n",
        "q2 Q0 a 3 1.0 m.a.step-3.s.full\n",
    ]


def test_scores_read_back_bitwise(tmp_path) -> None:
    """``repr`` scores parse back to the same doubles (float32 model outputs included)."""
    import numpy as np

    rng = random.Random(3)
    values = [0.1 + 0.2, 1 / 3, -0.0, 5e-324, 1e300, -123.456e-7,
              *[float(np.float32(rng.gauss(0, 4))) for _ in range(50)],
              *[rng.uniform(-1, 1) for _ in range(50)]]
    scores = {(f"q{i % 7}", f"d{i}"): v for i, v in enumerate(values)}
    path = trec.write_run(tmp_path / "x.run", scores, "tag")
    back = {(q, d): s for q, d, s in trec.stream_run(path)}
    assert back.keys() == scores.keys()
    assert all(struct.pack("<d", back[k]) == struct.pack("<d", scores[k]) for k in scores)


def test_tags() -> None:
    assert trec.run_tag("tiny", "r8-all", "step-40", "components", "mlp_only") == (
        "tiny.r8-all.step-40.components.mlp_only")
    assert trec.run_tag("first_stage", "dl19") == "first_stage.dl19"
    for bad in ("", "two words", "tab\there", "new\nline"):
        with pytest.raises(ValueError, match="a TREC run tag is one word"):
            trec.check_tag(bad)
    with pytest.raises(ValueError, match="a TREC run tag is one word"):
        trec.run_tag("my model", "full")
    with pytest.raises(ValueError, match="a TREC run tag is one word"):
        list(trec.run_lines({("q", "d"): 1.0}, "a b"))


def test_bad_scores_and_ids_are_refused(tmp_path) -> None:
    for score in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="'q1' document 'd1' has score .* finite"):
            list(trec.run_lines({("q1", "d1"): score}, "t"))
    with pytest.raises(ValueError, match="ids in a TREC run are one word"):
        list(trec.run_lines({("q 1", "d1"): 1.0}, "t"))
    path = tmp_path / "bad.run"
    with pytest.raises(ValueError, match="finite"):
        trec.write_run(path, {("q1", "d0"): 1.0, ("q1", "d1"): float("nan")}, "t")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_write_runs_is_atomic(tmp_path) -> None:
    out = tmp_path / "runs"
    runs = {"full": {("q1", "a"): 2.0, ("q1", "b"): 1.0}, "no_lora": {("q1", "a"): 0.5}}
    paths = trec.write_runs(out, runs, lambda name: f"m.a.step-1.s.{name}")
    assert paths == {"full": out / "full.run", "no_lora": out / "no_lora.run"}
    assert sorted(p.name for p in out.iterdir()) == ["full.run", "no_lora.run"]
    assert out.joinpath("no_lora.run").read_text() == "q1 Q0 a 1 0.5 m.a.step-1.s.no_lora\n"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="finite"):
        trec.write_runs(out, {**runs, "late": {("q1", "a"): float("nan")}}, lambda n: n)
    with pytest.raises(ValueError, match="a TREC run tag is one word"):
        trec.write_runs(out, runs, lambda name: f"bad {name}")
    for name in ("../escape", ".hidden", "a b", ""):
        with pytest.raises(ValueError, match="plain file name"):
            trec.write_runs(out, {name: runs["full"]}, lambda n: "t")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no temporary folder left


def test_stream_run_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "first.run"
    path.write_text("q1 Q0 d1 1 2.5 bm25\n\nq1 Q0 d2 2 1.5 bm25\n")
    assert list(trec.stream_run(path)) == [("q1", "d1", 2.5), ("q1", "d2", 1.5)]
    cases = [("q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 2 1.5\n", "line 2: a TREC run line has 6 fields"),
             ("q1 Q0 d1 1 high bm25\n", "line 1: score 'high' is not a number"),
             ("q1 Q0 d1 1 2 bm25\n\nq1 Q0 d2 2 nan bm25\n", "line 3: score 'nan' is not finite")]
    for text, says in cases:
        path.write_text(text)
        with pytest.raises(ValueError) as caught:
            list(trec.stream_run(path))
        assert str(path) in str(caught.value) and says in str(caught.value)


def _awkward_case() -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], float]]:
    """Judgements and scores that exercise every rule of trec_eval's evaluation: ties broken
    by docid, more than 10 documents, unjudged documents, grade-1 documents (relevant for
    nDCG only), a query with no relevant document, a judged query the run does not rank and a
    ranked query nobody judged."""
    rng = random.Random(11)
    qrels: dict[str, dict[str, int]] = {}
    scores: dict[tuple[str, str], float] = {}
    for q in range(6):
        qid = f"q{q}"
        qrels[qid] = {f"d{j}": rng.choice([0, 0, 1, 2, 3]) for j in range(0, 30, 2)}
        for j in range(25):
            scores[(qid, f"d{j}")] = float(rng.choice([0.5, 1.0, 1.5])) if q % 2 else \
                rng.uniform(-3, 3)
    qrels["q1"] = dict.fromkeys(qrels["q1"], 1)  # nothing relevant at rel=2
    qrels["q_unranked"] = {"d0": 2, "d1": 1}
    scores[("q_unjudged", "d0")] = 1.0
    return qrels, scores


def test_exported_run_gives_lorascope_metrics_exactly(tmp_path) -> None:
    """trec_eval's measures on the written file (plain Python and pytrec_eval) equal
    lorascope's per-query metrics (ir_measures) on the scores it was written from."""
    qrels, scores = _awkward_case()
    table = pa.table({"qid": [q for q, docs in qrels.items() for _ in docs],
                      "docid": [d for docs in qrels.values() for d in docs],
                      "relevance": pa.array([g for docs in qrels.values()
                                             for g in docs.values()], pa.int32())})
    reported = metrics.per_query(table, [(q, d, s) for (q, d), s in scores.items()], MEASURES)
    assert reported["RR(rel=2)"]["q_unranked"] == 0.0 and "q_unjudged" not in reported["AP(rel=2)"]
    path = trec.write_run(tmp_path / "awkward.run", scores, "awkward")
    run = check_run_file(path, "awkward", qrels, reported)
    assert run == {q: {d: s for (q2, d), s in scores.items() if q2 == q}
                   for q in sorted({q for q, _ in scores})}
    # and the two independent implementations agree with each other bitwise
    assert reference_trec_eval(qrels, run) == pytrec_eval_measures(qrels, run)


def test_parse_trec_run_is_plain(tmp_path) -> None:
    path = tmp_path / "r.run"
    path.write_text("q1 Q0 a 1 2.0 t\nq1 Q0 b 2 1.0 t\n")
    run, lines = parse_trec_run(path)
    assert run == {"q1": {"a": 2.0, "b": 1.0}} and [f[5] for f in lines] == ["t", "t"]
