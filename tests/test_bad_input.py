"""Bad input through the command line, as a user meets it: each case gives one clear error that
names the file or config key, exit code 1, and leaves no output behind.

The table of cases here is the one in the README's "Bad input" section: config values the
schema or the plan check refuses (``lorascope validate-config`` runs every check the workflow
runs), and data or model files that are empty, corrupt or truncated.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from small_study import small_study, write_config

from lorascope import cli
from lorascope.study import slices
from lorascope.study.parse import load_study

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lorascope"):
        rc = cli.main(argv)
    return rc, " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def _at(path: str, value: Any) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        node = raw
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key) if key.isdigit() else key]
        node[keys[-1]] = value

    return edit


# --------------------------------------------------------------------------- config values

CONFIG_CASES = [
    # (id, edit of the small study, text the one error line must hold)
    ("lr NaN", _at("training.lr", float("nan")), "config key 'training.lr': not a finite number (NaN or infinity)"),
    ("lr 0", _at("training.lr", 0.0), "config key 'training.lr': 0.0 is less than or equal to the minimum of 0"),
    ("lr infinite", _at("training.lr", float("inf")), "config key 'training.lr': not a finite number (NaN or infinity)"),
    ("queries 1e9", _at("data.splits.validation.queries", 1e9),
     "config key 'data.splits.validation.queries': 1000000000.0 is not of type 'integer'"),
    ("queries 10^9", _at("data.splits.validation.queries", 10**9),
     "config key 'data.splits.validation.queries': 1000000000 is greater than the maximum of 1000000"),
    ("steps 1e12", _at("training.steps", [1, 1e12]),
     "config key 'training.steps[1]': 1000000000000.0 is not of type 'integer'"),
    ("steps 10^12", _at("training.steps", [1, 10**12]),
     "config key 'training.steps[1]': 1000000000000 is greater than the maximum of 10000000"),
    ("tiny layers 100000", _at("models.tiny-llama.tiny.layers", 100000),
     "config key 'models.tiny-llama.tiny.layers': 100000 is greater than the maximum of 1024"),
    ("reserved sweep name", _at("sweeps.checkpoints", {"generate": "each_layer"}),
     "config key 'sweeps.checkpoints': the name is reserved"),
    ("ablation past the last layer", _at("sweeps.per_layer", {"ablations": {"x": {"drop": {"layers": [7]}}}}),
     "layer 7"),
    # five more of our own
    ("rank 5000", _at("training.adapters", [{"targets": "all", "ranks": [5000]}]),
     "config key 'training.adapters[0].ranks[0]': 5000 is greater than the maximum of 4096"),
    ("bool as a number", _at("training.queries_per_step", True),
     "config key 'training.queries_per_step': True is not of type 'integer'"),
    ("negative seed", _at("seed", -3), "config key 'seed': -3 is less than the minimum of 0"),
    ("max_length 10^6", _at("training.max_length", 10**6), "config key 'training.max_length'"),
    ("sweep on an unknown split", _at("sweeps.per_layer.splits", ["dl42"]),
     "config key 'sweeps.per_layer.splits[0]': unknown split 'dl42'"),
    ("a split listed twice", _at("sweeps.per_layer.splits", ["validation", "validation"]),
     "config key 'sweeps.per_layer.splits': ['validation', 'validation'] has non-unique elements"),
    ("groups larger than the data's", _at("training.group_size", 5),
     "config key 'training.group_size': 5 passages per group, but data.train.group_size "
     "builds groups of 4"),
    ("Table 1 on an adapter not trained", _at("report.table1_adapter", "r8-all"),
     "config key 'report.table1_adapter': no model trains adapter 'r8-all'"),
    ("Table 1 on an adapter without curves",
     lambda raw: (_at("training.adapters", [{"targets": "all", "ranks": [1], "curves": False}])(raw),
                  _at("report.table1_adapter", "r1-all")(raw)),
     "config key 'report.table1_adapter': adapter 'r1-all' is trained with 'curves: false'"),
    ("unknown main split", _at("report.main_split", "dl99"),
     "config key 'report.main_split': unknown split 'dl99'"),
]


@pytest.mark.parametrize("edit,expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_validate_config_refuses(tmp_path, caplog, edit, expected) -> None:
    raw = small_study()
    edit(raw)
    path = write_config(raw, tmp_path / "study.yaml")
    started = time.perf_counter()
    rc, message = _run(["validate-config", str(path)], caplog)
    assert rc == 1
    # the expected text, not followed by another digit ("maximum of 1000000" is not 10000000)
    assert str(path) in message and re.search(re.escape(expected) + r"(?!\d)", message), message
    assert time.perf_counter() - started < 10  # fails fast (a quadratic check once hung here)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_validate_config_accepts_the_small_study(tmp_path, caplog) -> None:
    path = write_config(small_study(), tmp_path / "study.yaml")
    assert _run(["validate-config", str(path)], caplog)[0] == 0


@pytest.mark.parametrize("text,expected", [
    ("study: a\nseed: 1\nseed: 2\n", ["duplicate key 'seed' (also on line 2)", "line 3"]),
    ("study: a\n? [x, y]\n: 1\n", ["a mapping key must be a scalar, got list ['x', 'y']", "line 2"]),
], ids=["duplicate key", "key not a scalar"])
def test_unreadable_mapping_keys_are_errors_naming_the_line(tmp_path, caplog, text, expected) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    rc, message = _run(["validate-config", str(path)], caplog)
    assert rc == 1 and str(path) in message
    assert all(part in message for part in expected), message


def test_yte_template_is_refused(tmp_path, caplog) -> None:
    path = tmp_path / "study.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"__use_yte__: true\nstudy: ?f\"{{__import__('pathlib').Path('{marker}').touch()}}\"\n")
    rc, message = _run(["validate-config", str(path)], caplog)
    assert rc == 1 and "__use_yte__" in message and str(path) in message
    assert not marker.exists()


def test_broken_model_config_json_named(tmp_path, caplog) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", ')
    raw = small_study()
    raw["models"] = {"local": {"path": str(model)}}
    path = write_config(raw, tmp_path / "study.yaml")
    rc, message = _run(["validate-config", str(path)], caplog)
    assert rc == 1
    assert "config key 'models.local'" in message and str(model / "config.json") in message


# --------------------------------------------------------------------------- data and model files


@pytest.fixture
def split_dir(tmp_path) -> Path:
    from helpers import write_toy_split

    write_toy_split(tmp_path / "split")
    return tmp_path / "split"


def _first_stage(split: Path, out: Path) -> list[str]:
    study = load_study(small_study())
    params = json.dumps(slices.first_stage(study, "validation"))
    return ["evaluate-first-stage", "--params", params, "--split-dir", str(split),
            "--metrics", str(out / "metrics.parquet"), "--summary", str(out / "summary.json")]


@pytest.mark.parametrize("table,says", [("qrels", "no judgements"), ("candidates", "no candidates")])
def test_empty_table_is_an_error_naming_it(split_dir, tmp_path, caplog, table, says) -> None:
    import pyarrow.parquet as pq

    path = split_dir / f"{table}.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    out = tmp_path / "out"
    rc, message = _run(_first_stage(split_dir, out), caplog)
    assert rc == 1 and str(path) in message and says in message, message
    assert not out.exists()


def test_empty_queries_named(split_dir) -> None:
    """The scoring stages read the queries too (the first stage does not need them)."""
    import pyarrow.parquet as pq

    from lorascope.data.splits import EmptySplitError, read_split

    path = split_dir / "queries.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(EmptySplitError, match=f"{path}: no queries"):
        read_split(split_dir)


def test_corrupt_parquet_named(split_dir, tmp_path, caplog) -> None:
    path = split_dir / "candidates.parquet"
    data = bytearray(path.read_bytes())
    data[4:68] = b"\xff" * 64  # the first data page's header, right after the magic bytes
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    rc, message = _run(_first_stage(split_dir, out), caplog)
    assert rc == 1 and str(path) in message, message
    assert not out.exists()


def _prepare_local(model: Path, out: Path) -> list[str]:
    raw = small_study()
    raw["models"] = {"local": {"path": str(model)}}
    study = load_study(raw)
    return ["prepare-base", "--params", json.dumps(slices.base_model(study, "local")), "--out", str(out)]


@pytest.fixture
def local_model(tmp_path, bases) -> Path:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(bases["llama"], model)
    return model


def test_truncated_safetensors_refused_at_prepare_base(local_model, tmp_path, caplog) -> None:
    weights = local_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "base"
    rc, message = _run(_prepare_local(local_model, out), caplog)
    assert rc == 1 and str(weights) in message, message
    assert not out.exists() and not list(tmp_path.glob(".base*"))


def test_broken_config_json_refused_at_prepare_base(local_model, tmp_path, caplog) -> None:
    (local_model / "config.json").write_text("{not json")
    out = tmp_path / "base"
    rc, message = _run(_prepare_local(local_model, out), caplog)
    assert rc == 1 and str(local_model / "config.json") in message, message
    assert not out.exists()


def test_json_outputs_refuse_nan(tmp_path) -> None:
    """A NaN metric (e.g. from a split without judgements) never becomes a bare ``NaN`` in a
    summary: writing it is an error naming the file, and nothing is written."""
    from lorascope.core.fileio import write_json

    path = tmp_path / "summary.json"
    with pytest.raises(ValueError, match=f"{path}: a value to write is not a finite number"):
        write_json(path, {"metrics": {"nDCG@10": float("nan")}})
    assert not path.exists() and not list(tmp_path.iterdir())
