"""A reranking split from your own files (``source: files``): a TREC run written from another
ranker's scores, topics, qrels and a collection file, built here from the embedded DL20 data.

The split must hold each judged query's top ``depth`` by the run's score (whatever the line
order), the run's scores as the first stage, the texts of the collection, and the qrels of
the kept queries; the first-stage row must be the run's own metrics. Bad files give one error
naming the file (and line).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers import write_own_files
from small_study import small_study

from lorascope.core import contracts, metrics
from lorascope.data.prepare import prepare_split
from lorascope.data.splits import SPLIT_FILES, split_paths
from lorascope.first_stage import evaluate_first_stage
from lorascope.study.parse import load_study
from lorascope.study.slices import split_data
from lorascope.study.spec import ConfigError

QUERIES = 6
RUN_DEPTH = 30


@pytest.fixture(scope="module")
def own_files(tmp_path_factory) -> dict:
    return write_own_files(tmp_path_factory.mktemp("own"), QUERIES, RUN_DEPTH)


def _spec(files: dict, **overrides) -> dict:
    root = files["root"]
    split = {"source": "files", "dataset": "dl20-overlap", "depth": 10, "queries": None,
             "run": str(root / "run.trec"), "topics": str(root / "topics.tsv"),
             "qrels": str(root / "qrels.txt"), "collection": str(root / "collection.jsonl")}
    return {"split": {**split, **overrides}, "seed": 13}


def _tables(out: Path) -> dict[str, list[dict]]:
    return {name: contracts.read_table(path, SPLIT_FILES[name]).to_pylist()
            for name, path in split_paths(out).items()}


def test_split_holds_the_runs_top_depth(own_files, tmp_path) -> None:
    counts = prepare_split(_spec(own_files), tmp_path / "split")
    tables = _tables(tmp_path / "split")
    assert counts["queries"] == QUERIES  # the unjudged run query is not a candidate
    assert [r["qid"] for r in tables["queries"]] == own_files["queries"]
    for qid in own_files["queries"]:
        ranked = sorted(((s, d) for (q, d), s in own_files["scores"].items() if q == qid),
                        reverse=True)[:10]
        got = [c for c in tables["candidates"] if c["qid"] == qid]
        assert [c["docid"] for c in got] == [d for _, d in ranked]
        assert [c["rank"] for c in got] == list(range(1, 11))
        assert [c["first_stage_score"] for c in got] == [s for s, _ in ranked]
        assert all(c["text"] == own_files["texts"][c["docid"]] for c in got)
    assert len(tables["qrels"]) == len(own_files["qrels"])

    sampled = prepare_split(_spec(own_files, queries=3), tmp_path / "sampled")
    assert sampled["queries"] == 3


def test_first_stage_row_is_the_runs_own_metrics(own_files, tmp_path) -> None:
    prepare_split(_spec(own_files), tmp_path / "split")
    params = {"split": "mine", "metrics": ["nDCG@10", "RR(rel=2)"]}
    means = evaluate_first_stage(params, tmp_path / "split", tmp_path / "m.parquet",
                                 tmp_path / "s.json")
    qrels = [(r["qid"], r["docid"], r["relevance"]) for r in own_files["qrels"]]
    import pyarrow as pa

    qrel_table = pa.table({"qid": [q for q, _, _ in qrels], "docid": [d for _, d, _ in qrels],
                           "relevance": pa.array([r for _, _, r in qrels], pa.int32())})
    top = [(q, d, s) for q in own_files["queries"]  # the run cut to the split's depth
           for s, d in sorted(((s, d) for (qq, d), s in own_files["scores"].items() if qq == q),
                              reverse=True)[:10]]
    direct = metrics.aggregate(metrics.per_query(qrel_table, top, ["nDCG@10", "RR(rel=2)"]))
    assert means == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize("case,says", [
    ("unknown docid", "run.trec: 1 ranked passages are not in"),
    ("missing topic", "topics.tsv: no topic for 1 of the 6 queries the run"),
    ("bad grade", "qrels.txt line 2: relevance grade 'high' is not an integer"),
    ("short run line", "run.trec line 1: a TREC run line has 6 fields"),
    ("collection not JSON", "collection.jsonl line 1: not a JSON passage"),
    ("document ranked twice", "run.trec line 2: document"),
    ("run and qrels share no query", "run.trec: ranks no query judged in"),
])
def test_bad_files_are_named(own_files, tmp_path, case, says) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("run.trec", "topics.tsv", "qrels.txt", "collection.jsonl"):
        (bad / name).write_text((own_files["root"] / name).read_text())
    qid = own_files["queries"][0]
    if case == "unknown docid":
        with (bad / "run.trec").open("a") as run:
            run.write(f"{qid} Q0 nowhere 0 99.0 overlap\n")
    elif case == "missing topic":
        lines = (bad / "topics.tsv").read_text().splitlines(keepends=True)
        (bad / "topics.tsv").write_text("".join(line for line in lines
                                                if not line.startswith(f"{qid}\t")))
    elif case == "bad grade":
        lines = (bad / "qrels.txt").read_text().splitlines(keepends=True)
        lines[1] = " ".join(lines[1].split()[:3] + ["high"]) + "\n"
        (bad / "qrels.txt").write_text("".join(lines))
    elif case == "short run line":
        (bad / "run.trec").write_text(f"{qid} Q0 x 1\n" + (bad / "run.trec").read_text())
    elif case == "document ranked twice":
        first = (bad / "run.trec").read_text().splitlines(keepends=True)[0]
        (bad / "run.trec").write_text(first + (bad / "run.trec").read_text())
    elif case == "run and qrels share no query":
        (bad / "qrels.txt").write_text("".join(
            "q" + line for line in (bad / "qrels.txt").read_text().splitlines(keepends=True)))
    else:
        (bad / "collection.jsonl").write_text("{not json\n")
    spec = _spec(own_files)
    for key in ("run", "topics", "qrels", "collection"):
        spec["split"][key] = str(bad / Path(spec["split"][key]).name)
    with pytest.raises(ValueError, match=None) as err:
        prepare_split(spec, tmp_path / "split")
    assert says in str(err.value) and str(bad) in str(err.value)
    assert not (tmp_path / "split").exists()


def _study_with(split: dict) -> dict:
    raw = small_study()
    raw["data"]["splits"]["mine"] = split
    return raw


def test_config_resolves_and_checks_the_files(own_files, tmp_path) -> None:
    root = own_files["root"]
    split = {"source": "files", "run": "run.trec", "topics": "topics.tsv",
             "qrels": "qrels.txt", "collection": "collection.jsonl", "depth": 10}
    study = load_study(_study_with(split), root)
    got = study.splits["mine"]
    assert got.run == str(root / "run.trec") and got.dataset == "mine"
    assert got.files() == [str(root / n) for n in
                           ("run.trec", "topics.tsv", "qrels.txt", "collection.jsonl")]
    params = split_data(study, "mine")["split"]
    assert "docstore" not in params and params["collection"] == str(root / "collection.jsonl")
    assert "run" not in split_data(study, "dl19")["split"]  # other splits' params unchanged

    cases = [
        ({"qrels": None}, "config key 'data.splits.mine.qrels': a split of source 'files' "
                          "needs its qrels file"),
        ({"docstore": "beir/scifact/test"}, "exactly one of collection"),
        ({"run": "missing.trec"}, "config key 'data.splits.mine.run': 'missing.trec' is not a "
                                  "file"),
    ]
    for change, says in cases:
        bad = copy.deepcopy(split)
        for key, value in change.items():
            if value is None:
                del bad[key]
            else:
                bad[key] = value
        with pytest.raises(ConfigError, match=None) as err:
            load_study(_study_with(bad), root)
        assert says in str(err.value)
    with pytest.raises(ConfigError, match="takes no topics"):
        load_study(_study_with({"source": "embedded", "dataset": "dl19", "topics": "topics.tsv"}),
                   root)
