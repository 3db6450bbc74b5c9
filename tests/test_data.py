"""Embedded data and the prepare stage: what the training groups and splits contain."""

from __future__ import annotations

import gzip
import json

import pyarrow.compute as pc
import pytest

from lorascope.core.contracts import CANDIDATES, QRELS, QUERIES, TRAIN_GROUPS, read_provenance, read_table
from lorascope.data import embedded
from lorascope.data.common import make_groups, select_queries
from lorascope.data.splits import split_paths
from lorascope.data.prepare import prepare_split, prepare_train

TRAIN = {
    "source": "embedded", "dataset": "dl21", "group_size": 16, "min_relevance": 2,
    "negatives": "scoreddocs", "negatives_depth": 100, "max_queries": None,
}


def test_shipped_tables_equal_a_rebuild(shared_trec_dl, tmp_path):
    counts = embedded.build(shared_trec_dl, tmp_path)
    assert counts["dl19"] == {"queries": 43, "candidates": 4300, "qrels": 9260}
    assert counts["dl20"] == {"queries": 54, "candidates": 5400, "qrels": 11386}
    assert counts["dl21"] == {"queries": 53, "candidates": 5300, "qrels": 10828}
    for name in ("dl19", "dl20", "dl21"):
        for table, contract in (("queries", QUERIES), ("candidates", CANDIDATES), ("qrels", QRELS)):
            rebuilt = read_table(tmp_path / f"{name}.{table}.parquet", contract)
            assert rebuilt.equals(embedded.load(name, table)), (name, table)


def test_select_queries_deterministic_and_order_free():
    qids = [str(i) for i in range(50)]
    a = select_queries(qids, 8, seed=1)
    assert a == select_queries(list(reversed(qids)), 8, seed=1)
    assert len(a) == 8 and a == sorted(a)
    assert select_queries(qids, 8, seed=2) != a
    assert select_queries(qids, None, seed=1) == sorted(qids)


def test_make_groups_with_and_without_replacement():
    pos = [("p1", "P1"), ("p2", "P2")]
    many = [(f"n{i}", f"N{i}") for i in range(20)]
    groups = make_groups("q", "query", pos, many, group_size=16, seed=0)
    assert [g["pos_docid"] for g in groups] == ["p1", "p2"]
    assert all(len(set(g["neg_docids"])) == 15 for g in groups)  # without replacement
    few = make_groups("q", "query", pos[:1], many[:3], group_size=8, seed=0)
    assert len(few[0]["neg_docids"]) == 7 and set(few[0]["neg_docids"]) <= {"n0", "n1", "n2"}
    assert make_groups("q", "query", pos, [], 16, 0) == []
    assert groups == make_groups("q", "query", pos, many, group_size=16, seed=0)


def test_train_groups_follow_the_recipe(tmp_path):
    out = tmp_path / "train_groups.parquet"
    params = {"train": TRAIN, "seed": 13, "holdout_queries": [8]}
    rows = prepare_train(params, out)
    groups = read_table(out, TRAIN_GROUPS).to_pylist()
    assert rows == len(groups)
    grades = {(r["qid"], r["docid"]): r["relevance"] for r in embedded.load("dl21", "qrels").to_pylist()}
    held_out = set(select_queries(embedded.query_ids("dl21"), 8, 13))
    assert not held_out & {g["qid"] for g in groups}
    for g in groups:
        assert grades[(g["qid"], g["pos_docid"])] >= 2
        assert len(g["neg_docids"]) == 15 == len(g["neg_texts"])
        assert all(grades.get((g["qid"], d), 0) == 0 for d in g["neg_docids"])
    # every grade>=2 passage of a training query's top-100 is the positive of one group
    cands = embedded.load("dl21", "candidates").to_pylist()
    expected = {(c["qid"], c["docid"]) for c in cands
                if grades.get((c["qid"], c["docid"]), 0) >= 2 and c["qid"] not in held_out}
    assert {(g["qid"], g["pos_docid"]) for g in groups} == expected
    assert read_provenance(out)["held_out_queries"] == {"dl21": sorted(held_out)}


def test_train_groups_of_several_collections(tmp_path):
    """Training on DL21 and DL20 together: each collection's groups, in config order, with the
    queries of a validation split drawn from one of them held out of that one only."""
    both = {**TRAIN, "dataset": ["dl21", "dl20"], "group_size": 4}
    prepare_train({"train": both, "seed": 13, "holdout_queries": {"dl20": [10]}},
                  tmp_path / "both.parquet")
    prepare_train({"train": {**both, "dataset": "dl21"}, "seed": 13, "holdout_queries": []},
                  tmp_path / "dl21.parquet")
    prepare_train({"train": {**both, "dataset": "dl20"}, "seed": 13, "holdout_queries": [10]},
                  tmp_path / "dl20.parquet")
    tables = {n: read_table(tmp_path / f"{n}.parquet", TRAIN_GROUPS).to_pylist()
              for n in ("both", "dl21", "dl20")}
    assert tables["both"] == tables["dl21"] + tables["dl20"]
    held = set(select_queries(embedded.query_ids("dl20"), 10, 13))
    assert not held & {g["qid"] for g in tables["both"]}
    assert read_provenance(tmp_path / "both.parquet")["held_out_queries"] == {
        "dl21": [], "dl20": sorted(held)}


def test_train_groups_max_queries_is_a_deterministic_subset(tmp_path):
    train = {**TRAIN, "max_queries": 5, "group_size": 4}
    a = prepare_train({"train": train, "seed": 13, "holdout_queries": []}, tmp_path / "a.parquet")
    b = prepare_train({"train": train, "seed": 13, "holdout_queries": []}, tmp_path / "b.parquet")
    ta, tb = read_table(tmp_path / "a.parquet", TRAIN_GROUPS), read_table(tmp_path / "b.parquet", TRAIN_GROUPS)
    assert a == b and ta.equals(tb)
    assert len(set(ta.column("qid").to_pylist())) == 5
    assert all(len(n) == 3 for n in ta.column("neg_docids").to_pylist())


def test_split_depth_queries_and_holdout_match_training(tmp_path):
    split = {"source": "embedded", "dataset": "dl21", "depth": 20, "queries": 8}
    counts = prepare_split({"split": split, "seed": 13}, tmp_path)
    paths = split_paths(tmp_path)
    cands = read_table(paths["candidates"], CANDIDATES)
    qids = set(read_table(paths["queries"], QUERIES).column("qid").to_pylist())
    assert qids == set(select_queries(embedded.query_ids("dl21"), 8, 13))
    assert counts["candidates"] == 8 * 20 and pc.max(cands["rank"]).as_py() == 20
    assert set(read_table(paths["qrels"], QRELS).column("qid").to_pylist()) == qids


def test_bad_data_files_name_file_and_line(shared_trec_dl, tmp_path):
    for name in ("bm25-top100-dl19.json.gz", "bm25-top100-dl20.json.gz", "bm25-top100-dl21.json.gz"):
        (tmp_path / name).write_bytes((shared_trec_dl / name).read_bytes())
    for name in ("qrels-dl19-passage.txt", "qrels-dl20-passage.txt"):
        (tmp_path / name).write_bytes((shared_trec_dl / name).read_bytes())
    bad_qrels = tmp_path / "qrels-dl21-passage.txt"
    bad_qrels.write_text("2082 0 msmarco_passage_01_552803451 0\n2082 0 doc high\n")
    with pytest.raises(ValueError, match=rf"{bad_qrels}:2: relevance grade 'high' is not an integer"):
        embedded.build(tmp_path, tmp_path / "out")
    bad_json = tmp_path / "bm25-top100-dl19.json.gz"
    with gzip.open(bad_json, "wt") as f:
        json.dump([{"query": "q", "hits": [{"qid": 1, "docid": "d"}]}], f)
    with pytest.raises(ValueError, match=rf"{bad_json}: entry 0 is not"):
        embedded.build(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_subset_takes_judged_queries_in_qid_order_and_top_depth():
    import pyarrow as pa

    from lorascope.data.splits import subset

    candidates = [(q, f"{q}-d{r}", "t") for q in ("q3", "q1", "q2", "q9") for r in range(5)]
    qrels = pa.table({"qid": ["q1", "q2", "q3"], "docid": ["x", "y", "z"], "relevance": [1, 1, 1]})
    assert subset(candidates, qrels) == [c for c in candidates if c[0] != "q9"]
    part = subset(candidates, qrels, queries=2, depth=3)
    assert part == [c for c in candidates if c[0] in ("q1", "q2") and int(c[1][-1]) < 3]
    assert subset(candidates, qrels, queries=2, depth=3) == part  # deterministic
    with pytest.raises(ValueError, match="depth must be a positive int"):
        subset(candidates, qrels, depth=0)
    with pytest.raises(ValueError, match="no judged query"):
        subset(candidates, pa.table({"qid": ["q7"], "docid": ["x"], "relevance": [1]}))
