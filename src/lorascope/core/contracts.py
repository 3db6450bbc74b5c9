"""The Parquet data contracts between stages, defined once and checked on read.

Every table a stage writes goes through :class:`ParquetSink` (streamed row groups, written
atomically: a temporary file renamed into place on success, removed on failure) and every
table a stage reads goes through :func:`read_table`, which refuses a file whose columns or
types differ from the contract with an error naming the file. Ids are strings everywhere.
Provenance (config slice, hash, versions) travels inside the file as schema metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"lorascope.provenance"


@dataclass(frozen=True)
class Contract:
    """A named Arrow schema that a Parquet artifact must match."""

    name: str
    schema: pa.Schema

    @property
    def columns(self) -> list[str]:
        return self.schema.names


TRAIN_GROUPS = Contract(
    "train_groups",
    pa.schema(
        [
            ("qid", pa.string()),
            ("query", pa.string()),
            ("pos_docid", pa.string()),
            ("pos_text", pa.string()),
            ("neg_docids", pa.list_(pa.string())),
            ("neg_texts", pa.list_(pa.string())),
        ]
    ),
)
QUERIES = Contract("queries", pa.schema([("qid", pa.string()), ("query", pa.string())]))
QRELS = Contract(
    "qrels",
    pa.schema([("qid", pa.string()), ("docid", pa.string()), ("relevance", pa.int32())]),
)
CANDIDATES = Contract(
    "candidates",
    pa.schema(
        [
            ("qid", pa.string()),
            ("docid", pa.string()),
            ("rank", pa.int32()),
            ("first_stage_score", pa.float64()),
            ("text", pa.string()),
        ]
    ),
)
SCORES = Contract(
    "scores",
    pa.schema(
        [
            ("ablation", pa.string()),
            ("qid", pa.string()),
            ("docid", pa.string()),
            ("score", pa.float64()),
        ]
    ),
)
METRICS = Contract(
    "metrics",
    pa.schema(
        [
            ("ablation", pa.string()),
            ("qid", pa.string()),
            ("measure", pa.string()),
            ("value", pa.float64()),
        ]
    ),
)

# ---- study summary tables (written by `summarize`, read by the report) ----

#: One row per (model, adapter, step, sweep, split, ablation, measure): the mean over the
#: split's judged queries, its change against the full adapter of the same job and the paired
#: test. First-stage rows: model = adapter = targets = "", rank = step = 0,
#: sweep = ablation = "first_stage", delta/p values null.
EVALUATIONS = Contract(
    "evaluations",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("rank", pa.int32()),
            ("targets", pa.string()),
            ("variant", pa.string()),
            ("step", pa.int32()),
            ("sweep", pa.string()),
            ("split", pa.string()),
            ("ablation", pa.string()),
            ("measure", pa.string()),
            ("value", pa.float64()),
            ("delta", pa.float64()),
            ("p_value", pa.float64()),
            ("p_adjusted", pa.float64()),
            ("significant", pa.bool_()),
            ("queries", pa.int32()),
        ]
    ),
)
#: Table 2's convergence rule applied per run: the first checkpoint whose ``measure`` on
#: ``split`` is within ``epsilon`` of the run's best checkpoint.
CONVERGENCE = Contract(
    "convergence",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("rank", pa.int32()),
            ("targets", pa.string()),
            ("split", pa.string()),
            ("measure", pa.string()),
            ("epsilon", pa.float64()),
            ("convergence_step", pa.int32()),
            ("best_step", pa.int32()),
            ("value_at_convergence", pa.float64()),
            ("best_value", pa.float64()),
        ]
    ),
)
#: The training loss log of every run.
TRAINING_LOG = Contract(
    "training_log",
    pa.schema(
        [
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("step", pa.int32()),
            ("loss", pa.float64()),
            ("lr", pa.float64()),
        ]
    ),
)

CONTRACTS: dict[str, Contract] = {
    c.name: c
    for c in (
        TRAIN_GROUPS, QUERIES, QRELS, CANDIDATES, SCORES, METRICS, EVALUATIONS, CONVERGENCE,
        TRAINING_LOG,
    )
}


class ContractError(ValueError):
    """A Parquet file does not match the contract it is read or written as."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class ParquetSink:
    """Streams record batches of one contract into ``path``, atomically.

    Use as a context manager; rows are written in row groups as they come, so a large table
    never has to sit in memory. On an exception the partial file is removed and ``path`` is
    left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        contract: Contract,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.contract = contract
        metadata = {b"lorascope.contract": contract.name.encode()}
        if provenance is not None:
            metadata[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True).encode()
        self._schema = contract.schema.with_metadata(metadata)
        self._tmp = _tmp_path(self.path)
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def __enter__(self) -> ParquetSink:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        return self

    def write_rows(self, rows: Mapping[str, list[Any]]) -> None:
        """Write one row group given as column name -> list of values."""
        missing = set(self.contract.columns) - set(rows)
        if missing:
            raise ContractError(f"{self.path}: rows for {self.contract.name} lack {sorted(missing)}")
        table = pa.table(
            {name: rows[name] for name in self.contract.columns}, schema=self._schema
        )
        self.write_table(table)

    def write_table(self, table: pa.Table) -> None:
        assert self._writer is not None, "ParquetSink used outside its context"
        if table.num_rows == 0:
            return
        table = _conform(table, self.contract, self.path).replace_schema_metadata(
            self._schema.metadata
        )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._writer is not None
        self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_table(
    path: str | os.PathLike[str],
    table: pa.Table | Mapping[str, list[Any]],
    contract: Contract,
    provenance: Mapping[str, Any] | None = None,
) -> int:
    """Write a whole table (or a column mapping) atomically; returns the number of rows."""
    with ParquetSink(path, contract, provenance) as sink:
        if isinstance(table, pa.Table):
            sink.write_table(table)
        else:
            sink.write_rows(table)
        return sink.rows


def write_rows(
    path: str | os.PathLike[str],
    contract: Contract,
    rows: Iterable[Mapping[str, Any]],
    provenance: Mapping[str, Any] | None = None,
    row_group: int = 2048,
) -> int:
    """Stream dict rows into a contract's Parquet file in row groups; returns the row count."""
    with ParquetSink(path, contract, provenance) as sink:
        chunk: list[Mapping[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= row_group:
                sink.write_rows({name: [r[name] for r in chunk] for name in contract.columns})
                chunk = []
        if chunk:
            sink.write_rows({name: [r[name] for r in chunk] for name in contract.columns})
        return sink.rows


def _conform(table: pa.Table, contract: Contract, path: Path) -> pa.Table:
    names = table.column_names
    if sorted(names) != sorted(contract.columns):
        raise ContractError(
            f"{path}: {contract.name} needs columns {contract.columns}, got {names}"
        )
    table = table.select(contract.columns)
    try:
        return table.cast(contract.schema.with_metadata(table.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ContractError(f"{path}: cannot store as {contract.name}: {err}") from err


def check_schema(path: str | os.PathLike[str], contract: Contract) -> pa.Schema:
    """Check a Parquet file's schema against ``contract`` without reading its rows."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such {contract.name} file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ContractError(f"{path}: not a readable Parquet file ({err})") from err
    found = [(f.name, f.type) for f in schema]
    wanted = [(f.name, f.type) for f in contract.schema]
    if found != wanted:
        want = ", ".join(f"{n}: {t}" for n, t in wanted)
        got = ", ".join(f"{n}: {t}" for n, t in found)
        raise ContractError(f"{path}: not a {contract.name} table; expected ({want}), found ({got})")
    return schema


def read_table(
    path: str | os.PathLike[str], contract: Contract, columns: Iterable[str] | None = None
) -> pa.Table:
    """Read a Parquet artifact after checking it against its contract; any read error (a
    corrupt page, a truncated file) names the file."""
    check_schema(path, contract)
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (OSError, pa.ArrowException) as err:
        raise ContractError(f"{path}: cannot read this {contract.name} table ({err})") from err


def iter_batches(
    path: str | os.PathLike[str], contract: Contract, batch_size: int = 1024
) -> Iterable[pa.RecordBatch]:
    """Stream a checked Parquet artifact batch by batch; read errors name the file."""
    check_schema(path, contract)
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size)
    except (OSError, pa.ArrowException) as err:
        raise ContractError(f"{path}: cannot read this {contract.name} table ({err})") from err


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record a :class:`ParquetSink` stored in the file, if any."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else None


def content_digest(path: str | os.PathLike[str], skip_columns: Iterable[str] = ()) -> str:
    """sha256 of a Parquet table's data: its schema without metadata and its values, without
    ``skip_columns`` - the same for two files that hold the same table, whatever their
    provenance or row-group layout. Read errors name the file."""
    import hashlib

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ContractError(f"{path}: not a readable Parquet table ({err})") from err
    skip = set(skip_columns)
    table = table.replace_schema_metadata(None)
    table = table.drop_columns([c for c in table.column_names if c in skip]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
