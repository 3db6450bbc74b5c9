"""The ir_datasets data source, run for real on a tiny pre-placed MS MARCO passage.

How the fake ``IR_DATASETS_HOME`` works
---------------------------------------
ir_datasets reads files it would download from cache paths under ``$IR_DATASETS_HOME``;
a file already there is used as is (no checksum, no network). For ``msmarco-passage`` (see
``ir_datasets/datasets/msmarco_passage.py`` and ``etc/downloads.json``) those are, relative to
``$IR_DATASETS_HOME/msmarco-passage/``:

* ``collection.tsv`` (``docid<TAB>text``) plus ``irds_version.txt`` holding exactly ``v2``
  (otherwise a "migration" deletes the collection); the docstore
  ``collection.tsv.pklz4`` is built from it on first use;
* ``train/queries.tsv`` (``qid<TAB>text``), ``train/qrels`` (``qid 0 docid rel``),
  ``train/ms.run`` (scoreddocs: ``qid docid`` or ``qid docid score``),
  ``train/small.triples.qidpid.tsv`` (``qid<TAB>pos<TAB>neg``: the docpairs of
  ``train/triples-small``); ``train/judged`` is ``train`` filtered to queries with qrels;
* ``trec-dl-2019/queries.tsv``, ``trec-dl-2019/qrels`` and ``trec-dl-2019/ms.run``
  (``trec-dl-2019/judged`` filters them to queries with qrels).

Nothing for ``trec-dl-2020`` is placed: loading it must fail with the clear error.

The trick for ir_datasets' module-level state: it computes its dataset paths from
``IR_DATASETS_HOME`` when ``import ir_datasets`` runs, once per process. So every check runs in
a fresh subprocess (``sys.executable -c``) whose environment names the fake home; the test
process never imports ir_datasets, and other test modules that do cannot interfere. Each
subprocess writes its result as JSON to a file. Downloads are made to fail at once even on a
machine with network: the proxy points at a closed local port and one try is allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import build_fake_beir, write_beir_run

from lorascope.core import contracts
from lorascope.data import common

NS = "msmarco-passage"

DOCS = {str(i): f"passage number {i} about topic {i % 5}" for i in range(30)}
DOCS["3"] = "café passage three with a non-ascii letter"

TRAIN_QUERIES = {
    "100": "what is topic zero",
    "101": "two positives query",
    "102": "query one oh two",
    "103": "query one oh three",
    "104": "query without scoreddocs",
    "105": "query with few negatives",
    "106": "query without qrels",
}
# qid -> positives (relevance 1). 107 has a qrel but no query text: not a candidate.
TRAIN_QRELS = {
    "100": ["0"],
    "101": ["1", "2"],
    "102": ["3"],
    "103": ["4"],
    "104": ["5"],
    "105": ["6"],
    "107": ["7"],
}
# (qid, docid, score) in file order; scores deliberately not sorted for 100.
TRAIN_RUN = (
    [("100", d, s) for d, s in [("10", 1.0), ("0", 9.0), ("11", 5.0), ("12", 7.0), ("13", 2.0),
                                ("14", 8.0), ("15", 3.0), ("16", 6.0), ("17", 4.0), ("18", 0.5)]]
    + [("101", d, 1.0) for d in ["1", "20", "21", "2", "22", "23", "24", "25"]]
    + [("102", d, 1.0) for d in ["26", "27", "3", "28", "29", "10"]]
    + [("103", d, 1.0) for d in ["11", "12", "13", "14", "999"]]  # 999 not in the collection
    + [("105", d, 1.0) for d in ["6", "20", "21"]]
    + [("107", d, 1.0) for d in ["8", "9"]]
)  # fmt: skip
TRIPLES = [
    ("100", "0", "10"), ("100", "0", "10"), ("100", "0", "11"), ("100", "0", "0"),
    ("101", "1", "12"), ("101", "2", "1"), ("101", "1", "13"), ("101", "2", "14"),
    ("104", "5", "15"), ("104", "5", "16"), ("104", "5", "17"), ("104", "5", "18"),
    ("104", "5", "19"), ("104", "5", "20"), ("104", "5", "21"), ("105", "6", "22"),
]  # fmt: skip

DL19_QUERIES = {"200": "first dl query", "201": "second dl query", "202": "unjudged dl query"}
DL19_QRELS = [("200", "0", 3), ("200", "1", 0), ("200", "2", 1), ("201", "3", 2)]
# Official TREC DL lists: two columns, no scores (all 0), file order = rank.
DL19_RUN = [("200", d) for d in ["5", "1", "0", "7", "2"]] + [
    ("201", d) for d in ["3", "999", "4", "8"]
] + [("202", "9")]  # fmt: skip


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def build_fake_home(home: Path) -> Path:
    """Pre-place a tiny msmarco-passage under ``home`` (see the module docstring)."""
    base = home / NS
    (base).mkdir(parents=True)
    (base / "irds_version.txt").write_text("v2")
    _write(base / "collection.tsv", [f"{d}\t{t}" for d, t in DOCS.items()])
    _write(base / "train/queries.tsv", [f"{q}\t{t}" for q, t in TRAIN_QUERIES.items()])
    _write(base / "train/qrels", [f"{q}\t0\t{d}\t1" for q, ds in TRAIN_QRELS.items() for d in ds])
    _write(base / "train/ms.run", [f"{q}\t{d}\t{s}" for q, d, s in TRAIN_RUN])
    _write(base / "train/small.triples.qidpid.tsv", ["\t".join(t) for t in TRIPLES])
    _write(base / "trec-dl-2019/queries.tsv", [f"{q}\t{t}" for q, t in DL19_QUERIES.items()])
    _write(base / "trec-dl-2019/qrels", [f"{q} Q0 {d} {r}" for q, d, r in DL19_QRELS])
    _write(base / "trec-dl-2019/ms.run", [f"{q}\t{d}" for q, d in DL19_RUN])
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_home(tmp_path_factory.mktemp("irds_home"))


PRELUDE = """
import json, logging, sys, traceback
logging.basicConfig(level=logging.INFO)
from lorascope.data import irds, common
from lorascope.core import contracts

def _expect_error(fn):
    try:
        fn()
    except Exception as err:
        return {"type": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__],
                "message": str(err)}
    return None

"""


def run_irds(home: Path, out: Path, code: str) -> object:
    """Run ``code`` (which sets ``result``) in a subprocess with the fake home; return result."""
    result_file = out / "result.json"
    script = (
        PRELUDE + textwrap.dedent(code) + f"\njson.dump(result, open({str(result_file)!r}, 'w'))\n"
    )
    env = {
        **os.environ,
        "IR_DATASETS_HOME": str(home),
        "IR_DATASETS_SKIP_DISK_FREE": "true",  # the real size hint is 14 GB
        "IR_DATASETS_DL_TRIES": "1",
        "HF_HUB_OFFLINE": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(result_file.read_text())


GROUP_ARGS = {
    "group_size": 4,
    "min_relevance": 1,
    "negatives_depth": 200,
    "max_queries": None,
    "exclude_qids": frozenset(),
    "seed": 0,
}


def train(home: Path, out: Path, **overrides: object) -> list[dict]:
    args = {**GROUP_ARGS, **overrides}
    args["exclude_qids"] = sorted(args["exclude_qids"])  # JSON
    dataset = args.pop("dataset", f"{NS}/train/judged")
    code = f"""
    args = json.loads({json.dumps(json.dumps(args))})
    args["exclude_qids"] = frozenset(args["exclude_qids"])
    result = list(irds.train_groups({dataset!r}, **args))
    """
    return run_irds(home, out, code)  # type: ignore[return-value]


def by_pos(rows: list[dict]) -> dict[str, dict]:
    return {r["pos_docid"]: r for r in rows}


def test_query_ids(home: Path, tmp_path: Path) -> None:
    result = run_irds(home, tmp_path, f"""
    result = [irds.query_ids("{NS}/trec-dl-2019/judged"), irds.query_ids("{NS}/train"),
              [type(q).__name__ for q in irds.query_ids("{NS}/train/judged")]]
    """)  # fmt: skip
    judged, train_all, types = result  # type: ignore[misc]
    assert judged == ["200", "201"]
    assert train_all == list(TRAIN_QUERIES)
    assert set(types) == {"str"}


def test_train_groups_scoreddocs(home: Path, tmp_path: Path) -> None:
    rows = train(home, tmp_path, negatives="scoreddocs", negatives_depth=5)
    for row in rows:
        assert set(row) == set(contracts.TRAIN_GROUPS.columns)
        assert all(isinstance(row[k], str) for k in ("qid", "query", "pos_docid", "pos_text"))
        assert len(row["neg_docids"]) == len(row["neg_texts"]) == GROUP_ARGS["group_size"] - 1
        assert row["pos_text"] == DOCS[row["pos_docid"]]
        assert row["query"] == TRAIN_QUERIES[row["qid"]]
        assert [DOCS[d] for d in row["neg_docids"]] == row["neg_texts"]
        assert row["pos_docid"] not in row["neg_docids"]
        assert not set(row["neg_docids"]) & set(TRAIN_QRELS[row["qid"]])
    # One row per positive; 104 has no scoreddocs (no negatives), 106/107 are no candidates.
    assert sorted((r["qid"], r["pos_docid"]) for r in rows) == [
        ("100", "0"), ("101", "1"), ("101", "2"), ("102", "3"), ("103", "4"), ("105", "6"),
    ]  # fmt: skip
    groups = by_pos(rows)
    # 100: top 5 by score are 0 (positive, 9.0), 14 (8.0), 12 (7.0), 16 (6.0), 11 (5.0).
    assert set(groups["0"]["neg_docids"]) <= {"14", "12", "16", "11"}
    assert len(set(groups["0"]["neg_docids"])) == 3  # enough negatives: drawn without replacement
    # 102: equal scores keep file order; rank <= 5 is 26, 27, (3 = positive), 28, 29.
    assert set(groups["3"]["neg_docids"]) <= {"26", "27", "28", "29"}
    # 103: 999 is not in the docstore: skipped, leaving 11..14.
    assert set(groups["4"]["neg_docids"]) <= {"11", "12", "13", "14"}
    # 105: only two negatives (20, 21) for three slots: sampled with replacement.
    assert set(groups["6"]["neg_docids"]) <= {"20", "21"}
    assert len(groups["6"]["neg_docids"]) == 3


def test_train_groups_depth_is_rank_cap(home: Path, tmp_path: Path) -> None:
    rows = train(home, tmp_path, negatives="scoreddocs", negatives_depth=3, group_size=3)
    groups = by_pos(rows)
    # Ranks 1..3 of 100 by score: 0 (positive), 14, 12 -> exactly those two negatives.
    assert sorted(groups["0"]["neg_docids"]) == ["12", "14"]


def test_train_groups_docpairs(home: Path, tmp_path: Path) -> None:
    rows = train(home, tmp_path, negatives=f"docpairs:{NS}/train/triples-small",
                 negatives_depth=5)  # fmt: skip
    groups = by_pos(rows)
    assert sorted((r["qid"], r["pos_docid"]) for r in rows) == [
        ("100", "0"), ("101", "1"), ("101", "2"), ("104", "5"), ("105", "6"),
    ]  # fmt: skip
    # 100: doc_id_b deduplicated (10, 10, 11) and the positive (0) dropped -> {10, 11}.
    assert set(groups["0"]["neg_docids"]) == {"10", "11"}
    # 101: 1 is a judged positive of 101 -> not a negative.
    for pos in ("1", "2"):
        assert set(groups[pos]["neg_docids"]) == {"12", "13", "14"}
    # 104: seven distinct negatives, capped at negatives_depth=5 in stream order.
    assert set(groups["5"]["neg_docids"]) <= {"15", "16", "17", "18", "19"}
    assert len(set(groups["5"]["neg_docids"])) == 3
    assert groups["6"]["neg_docids"] == ["22", "22", "22"]


def test_train_groups_exclusion_and_max_queries(home: Path, tmp_path: Path) -> None:
    excluded = train(home, tmp_path, negatives="scoreddocs", exclude_qids=frozenset({"101", "102"}))
    assert {r["qid"] for r in excluded} == {"100", "103", "105"}

    candidates = ["100", "101", "102", "103", "104", "105"]  # queries with a positive
    for seed in (0, 1):
        picked = train(home, tmp_path, negatives=f"docpairs:{NS}/train/triples-small",
                       max_queries=2, seed=seed)  # fmt: skip
        again = train(home, tmp_path, negatives=f"docpairs:{NS}/train/triples-small",
                      max_queries=2, seed=seed)  # fmt: skip
        assert picked == again  # deterministic, including the negative draw
        expected = set(common.select_queries(candidates, 2, seed)) & {"100", "101", "104", "105"}
        assert {r["qid"] for r in picked} == expected


def test_train_groups_min_relevance(home: Path, tmp_path: Path) -> None:
    # DL19 judged has graded qrels and a run: only relevance >= 2 counts as positive.
    rows = train(home, tmp_path, dataset=f"{NS}/trec-dl-2019/judged", negatives="scoreddocs",
                 min_relevance=2)  # fmt: skip
    assert sorted((r["qid"], r["pos_docid"]) for r in rows) == [("200", "0"), ("201", "3")]
    # "2" is judged 1 for query 200: neither positive nor negative (judged 0 or unjudged only).
    assert set(by_pos(rows)["0"]["neg_docids"]) <= {"5", "1", "7"}


def test_rerank_split_dl19(home: Path, tmp_path: Path) -> None:
    result = run_irds(home, tmp_path, f"""
    q, c, r = irds.rerank_split("{NS}/trec-dl-2019/judged", depth=3, qids=None)
    result = [list(q), list(c), list(r)]
    """)  # fmt: skip
    queries, cands, qrels = result  # type: ignore[misc]
    assert queries == [{"qid": "200", "query": DL19_QUERIES["200"]},
                       {"qid": "201", "query": DL19_QUERIES["201"]}]  # fmt: skip
    # File order is the rank (all scores 0); 999 (rank 2 of 201) is not in the docstore.
    assert [(h["qid"], h["docid"], h["rank"]) for h in cands] == [
        ("200", "5", 1), ("200", "1", 2), ("200", "0", 3), ("201", "3", 1), ("201", "4", 3),
    ]  # fmt: skip
    for hit in cands:
        assert isinstance(hit["rank"], int) and isinstance(hit["first_stage_score"], float)
        assert hit["first_stage_score"] == 0.0
        assert hit["text"] == DOCS[hit["docid"]]
    assert qrels == [{"qid": q, "docid": d, "relevance": rel} for q, d, rel in DL19_QRELS]


def test_rerank_split_sorts_by_score_and_restricts_qids(home: Path, tmp_path: Path) -> None:
    result = run_irds(home, tmp_path, f"""
    q, c, r = irds.rerank_split("{NS}/train/judged", depth=4, qids=["100", "nope"])
    result = [list(q), list(c), list(r)]
    """)  # fmt: skip
    queries, cands, qrels = result  # type: ignore[misc]
    assert [x["qid"] for x in queries] == ["100"]
    assert [(h["docid"], h["rank"], h["first_stage_score"]) for h in cands] == [
        ("0", 1, 9.0), ("14", 2, 8.0), ("12", 3, 7.0), ("16", 4, 6.0),
    ]  # fmt: skip
    assert qrels == [{"qid": "100", "docid": "0", "relevance": 1}]


def test_contract_round_trip(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = run_irds(home, tmp_path, f"""
    from pathlib import Path
    out = Path({str(out)!r})
    n = common.write_train_groups(out / "train.parquet", irds.train_groups(
        "{NS}/train/judged", group_size=4, min_relevance=1, negatives="scoreddocs",
        negatives_depth=10, max_queries=None, exclude_qids=frozenset(), seed=0), {{"t": 1}})
    counts = common.write_split(out / "dl19", *irds.rerank_split(
        "{NS}/trec-dl-2019/judged", depth=10, qids=None), {{"t": 1}})
    result = [n, counts]
    """)  # fmt: skip
    n_groups, counts = result  # type: ignore[misc]
    groups = contracts.read_table(out / "train.parquet", contracts.TRAIN_GROUPS)
    assert groups.num_rows == n_groups == 6
    assert all(len(x) == 3 for x in groups.column("neg_docids").to_pylist())
    paths = common.split_paths(out / "dl19")
    cands = contracts.read_table(paths["candidates"], contracts.CANDIDATES)
    assert cands.num_rows == counts["candidates"] == 8  # 5 + (4 - missing 999)
    assert contracts.read_table(paths["queries"], contracts.QUERIES).num_rows == 2
    qrels = contracts.read_table(paths["qrels"], contracts.QRELS)
    assert qrels.column("relevance").to_pylist() == [r for _, _, r in DL19_QRELS]
    assert contracts.read_provenance(paths["qrels"]) == {"t": 1}


def test_errors(home: Path, tmp_path: Path) -> None:
    result = run_irds(home, tmp_path, f"""
    kw = dict(group_size=4, min_relevance=1, negatives_depth=10, max_queries=None,
              exclude_qids=frozenset(), seed=0)
    result = {{
        "offline": _expect_error(lambda: list(irds.rerank_split(
            "{NS}/trec-dl-2020/judged", depth=10, qids=None)[0])),
        "offline_train": _expect_error(lambda: list(irds.train_groups(
            "{NS}/dev/small", negatives="scoreddocs", **kw))),
        "no_qrels": _expect_error(lambda: irds.train_groups(
            "{NS}", negatives="scoreddocs", **kw)),
        "no_scoreddocs": _expect_error(lambda: irds.rerank_split(
            "{NS}/dev", depth=10, qids=None)),
        "no_scoreddocs_train": _expect_error(lambda: irds.train_groups(
            "{NS}/dev", negatives="scoreddocs", **kw)),
        "no_docpairs": _expect_error(lambda: irds.train_groups(
            "{NS}/train/judged", negatives="docpairs:{NS}/trec-dl-2019", **kw)),
        "bad_negatives": _expect_error(lambda: irds.train_groups(
            "{NS}/train/judged", negatives="bm25", **kw)),
        "unknown": _expect_error(lambda: irds.query_ids("no-such/dataset")),
    }}
    """)  # fmt: skip
    errors = dict(result)  # type: ignore[call-overload]
    for key in ("offline", "offline_train"):
        err = errors[key]
        assert err is not None and "RuntimeError" in err["mro"], err
        assert "IR_DATASETS_HOME" in err["message"] and "pre-placed" in err["message"]
    assert f"{NS}/trec-dl-2020/judged" in errors["offline"]["message"]
    assert f"{NS}/dev/small" in errors["offline_train"]["message"]
    expected = {
        "no_qrels": (f"'{NS}'", "qrels"),
        "no_scoreddocs": (f"{NS}/dev", "scoreddocs"),
        "no_scoreddocs_train": (f"{NS}/dev", "scoreddocs"),
        "no_docpairs": (f"{NS}/trec-dl-2019", "docpairs"),
        "bad_negatives": ("bm25",),
        "unknown": ("no-such/dataset",),
    }
    for key, needles in expected.items():
        err = errors[key]
        assert err is not None and err["type"] == "ValueError", (key, err)
        for needle in needles:
            assert needle in err["message"], (key, err)


def test_bounded_top_scored_matches_a_full_sort() -> None:
    """The streaming top-k (in-process: it needs no ir_datasets) equals a stable full sort."""
    import random

    from lorascope.data.ranking import IdCodec, TopScored

    rng = random.Random(0)
    codec = IdCodec()
    for depth in (1, 3, 10):
        stream = [
            (
                f"q{rng.randrange(5)}",
                str(rng.randrange(500)),
                float(rng.choice([0, 1, 2, rng.random()])),
            )
            for _ in range(2000)
        ]
        top = TopScored([f"q{i}" for i in range(4)], depth, codec)  # q4 is not wanted
        for qid, doc, score in stream:
            top.add(qid, doc, score)
        for i in range(4):
            qid = f"q{i}"
            assert len(top.ids[qid]) < 2 * depth  # bounded while streaming
            full = sorted(((d, s) for q, d, s in stream if q == qid), key=lambda x: -x[1])
            seen, expected = set(), []
            for d, s in full[:depth]:
                if d not in seen:
                    seen.add(d)
                    expected.append((d, s))
            assert [(codec.decode(c), s) for c, s in top.pop(qid)] == expected


def test_id_codec_round_trip() -> None:
    from lorascope.data.ranking import IdCodec

    codec = IdCodec()
    ids = ["0", "7", "007", "8841822", "abc", "D123", "", str(2**31), str(2**31 - 1), "abc",
           "١٢", "12", "²"]  # non-ASCII digits are names, never the number they look like
    codes = [codec.encode(i) for i in ids]
    assert [codec.decode(c) for c in codes] == ids
    assert codes[0] == 0 and codes[1] == 7 and codes[2] < 0 and codes[4] == codes[9]
    assert codes[10] < 0 and codes[11] == 12 and codes[12] < 0


# --------------------------------------------------------------------------- BEIR + a run file

def test_beir_split_from_a_run_file(tmp_path: Path) -> None:
    """An ir_datasets dataset without scoreddocs (BEIR) reranks the top of a run file (its
    queries: the judged ones the run ranks, as for source: files); a run that ranks a passage
    the corpus lacks is an error naming the run file."""
    home = build_fake_beir(tmp_path / "home")
    run = write_beir_run(tmp_path / "bm25.trec")
    out = tmp_path / "out"
    out.mkdir()
    result = run_irds(home, out, f"""
    from lorascope.data.prepare import prepare_split
    from lorascope.data.splits import SPLIT_FILES, split_paths
    spec = {{"source": "ir_datasets", "dataset": "beir/scifact/test", "depth": 3,
            "queries": None, "run": {str(run)!r}}}
    prepare_split({{"split": spec, "seed": 1}}, "split")
    tables = {{n: contracts.read_table(p, SPLIT_FILES[n]).to_pylist()
              for n, p in split_paths("split").items()}}
    no_run = _expect_error(lambda: prepare_split(
        {{"split": {{**spec, "run": None}}, "seed": 1}}, "split2"))
    with open({str(run)!r}, "a") as f:
        f.write("1 Q0 nowhere 0 99.0 bm25\\n")
    unknown = _expect_error(lambda: prepare_split({{"split": spec, "seed": 1}}, "split3"))
    result = {{"tables": tables, "no_run": no_run, "unknown": unknown}}
    """)
    tables = result["tables"]  # type: ignore[index]
    assert [q["qid"] for q in tables["queries"]] == ["1", "2"]
    assert [(c["qid"], c["docid"], c["rank"]) for c in tables["candidates"]] == [
        ("1", "d0", 1), ("1", "d1", 2), ("1", "d2", 3), ("2", "d7", 1), ("2", "d6", 2),
        ("2", "d5", 3)]
    assert tables["candidates"][0]["text"] == "title 0 scientific claim number 0"
    assert len(tables["qrels"]) == 3
    assert "has no scoreddocs" in result["no_run"]["message"]  # type: ignore[index]
    assert "data.splits.<name>.run" in result["no_run"]["message"]  # type: ignore[index]
    unknown = result["unknown"]["message"]  # type: ignore[index]
    assert str(run) in unknown and "1 ranked passages are not in the documents of" in unknown
