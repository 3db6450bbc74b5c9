"""Parquet contracts: round trips, checks on read naming the file, atomic writes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lorascope.core.contracts import (
    CANDIDATES,
    QRELS,
    TRAIN_GROUPS,
    ContractError,
    ParquetSink,
    read_provenance,
    read_table,
    write_table,
)


def test_round_trip_with_provenance(tmp_path):
    path = tmp_path / "qrels.parquet"
    n = write_table(path, {"qid": ["1", "1"], "docid": ["a", "b"], "relevance": [2, 0]}, QRELS, {"seed": 3})
    assert n == 2
    table = read_table(path, QRELS)
    assert table.schema.field("relevance").type == pa.int32()
    assert table.column("docid").to_pylist() == ["a", "b"]
    assert read_provenance(path) == {"seed": 3}


def test_list_columns(tmp_path):
    path = tmp_path / "g.parquet"
    row = {"qid": ["q"], "query": ["x"], "pos_docid": ["p"], "pos_text": ["t"],
           "neg_docids": [["n1", "n2"]], "neg_texts": [["a", "b"]]}
    write_table(path, row, TRAIN_GROUPS)
    assert read_table(path, TRAIN_GROUPS).column("neg_docids").to_pylist() == [["n1", "n2"]]


def test_wrong_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"qid": [1], "docid": ["a"]}), path)
    with pytest.raises(ContractError, match=rf"{path}: not a candidates table"):
        read_table(path, CANDIDATES)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ContractError, match=rf"{junk}: not a readable Parquet file"):
        read_table(junk, CANDIDATES)
    with pytest.raises(ContractError, match="no such candidates file"):
        read_table(tmp_path / "missing.parquet", CANDIDATES)


def test_missing_column_on_write(tmp_path):
    with pytest.raises(ContractError, match="lack \\['relevance'\\]"):
        write_table(tmp_path / "q.parquet", {"qid": ["1"], "docid": ["a"]}, QRELS)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "qrels.parquet"
    with pytest.raises(RuntimeError):
        with ParquetSink(path, QRELS) as sink:
            sink.write_rows({"qid": ["1"], "docid": ["a"], "relevance": [1]})
            raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []


def test_uncastable_values(tmp_path):
    with pytest.raises(ContractError, match="cannot store as qrels"):
        write_table(tmp_path / "q.parquet", pa.table({"qid": ["1"], "docid": ["a"], "relevance": ["high"]}), QRELS)
