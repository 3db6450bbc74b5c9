"""Content digests (``lorascope digest``): two runs compare equal exactly when their tables
and adapters hold the same data, whatever their provenance."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lorascope.cli import main
from lorascope.core.contracts import SCORES, write_table
from lorascope.digest import content_digests, differences


def _run(root, scores, record, adapter=b"weights"):
    table = {"ablation": ["full"] * len(scores), "qid": ["1"] * len(scores),
             "docid": [str(i) for i in range(len(scores))], "score": scores}
    write_table(root / "eval" / "scores.parquet", table, SCORES, record)
    folder = root / "adapters" / "m" / "r8-all" / "step-1"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(adapter)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps(record))  # provenance: not digested
    (root / "eval" / "runs").mkdir()
    (root / "eval" / "runs" / "full.run").write_text(
        "".join(f"1 Q0 {i} {i + 1} {s!r} m.r8-all.step-1.x.full\n" for i, s in enumerate(scores)))
    (root / "logs").mkdir()
    (root / "logs" / "x.parquet").write_bytes(b"not read")
    return root


def test_provenance_and_layout_do_not_count_values_do(tmp_path):
    a = _run(tmp_path / "a", [0.5, 0.25], {"created": "monday"})
    b = _run(tmp_path / "b", [0.5, 0.25], {"created": "tuesday"})
    # the same data in other row groups
    pq.write_table(pq.read_table(b / "eval" / "scores.parquet"), b / "eval" / "scores.parquet",
                   row_group_size=1)
    assert (a / "eval" / "scores.parquet").read_bytes() != (b / "eval" / "scores.parquet").read_bytes()
    da, db = content_digests(a), content_digests(b)
    assert da == db
    assert set(da) == {"eval/scores.parquet", "adapters/m/r8-all/step-1/adapter_model.safetensors",
                       "adapters/m/r8-all/step-1/adapter_config.json", "eval/runs/full.run"}
    c = _run(tmp_path / "c", [0.5, 0.25 + 2**-40], {"created": "monday"}, adapter=b"weightz")
    assert differences(content_digests(c), da) == {
        "changed": ["adapters/m/r8-all/step-1/adapter_model.safetensors", "eval/runs/full.run",
                    "eval/scores.parquet"],
        "missing": [], "new": []}


def test_cli_compares_against_earlier_digests(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.5], {})
    b = _run(tmp_path / "b", [0.75], {})
    digests = tmp_path / "a.json"
    assert main(["digest", str(a), "--out", str(digests)]) == 0
    assert main(["digest", str(a), "--against", str(digests)]) == 0
    assert "4 of 4 artifacts" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["digest", str(b), "--against", str(digests)])
    assert exit_info.value.code == 1
    assert "changed: eval/scores.parquet" in capsys.readouterr().out
