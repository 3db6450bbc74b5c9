"""The ``summarize`` stage: every evaluation of a study gathered into the summary tables the
report reads: the paper's (``evaluations``, ``convergence``, ``training_log``), each registered
analysis's (:func:`lorascope.analyses.registry.summary_tables`), and ``study.json``.

Inputs are found from the study's plan, not by globbing, so a stale file of an older config
never leaks into a report. An analysis contributes rows through its ``summary.collect`` when it
has one, else its jobs' tables are concatenated.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.analyses.registry import ANALYSES, load, summary_tables
from lorascope.core import fileio, provenance
from lorascope.core.contrasts import CONTRASTS, contrast_rows
from lorascope.core.contracts import (
    CONVERGENCE,
    EVALUATIONS,
    METRICS,
    TRAINING_LOG,
    Contract,
    read_table,
    write_rows,
    write_table,
)
from lorascope.core.names import CHECKPOINTS, FIRST_STAGE, FULL, RANDOM, STUDY_FILE, ZERO_SHOT

log = logging.getLogger(__name__)

STAGE = "summarize"
#: The run fields of an evaluation row (the job's wildcards and its adapter's description).
JOB_FIELDS = ("model", "adapter", "rank", "targets", "variant", "step", "sweep", "split")


def evaluation_rows(job: Mapping[str, Any], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """EVALUATIONS rows of one evaluate job's summary.json."""
    rows = []
    for name, result in summary["ablations"].items():
        for measure, value in result["metrics"].items():
            rows.append(
                {
                    **job,
                    "ablation": name,
                    "measure": measure,
                    "value": value,
                    "delta": result["delta"][measure],
                    "p_value": result["p_value"][measure],
                    "p_adjusted": result["p_adjusted"][measure],
                    "significant": bool(result["significant"][measure]),
                    "queries": result["queries"],
                }
            )
    return rows


def reference_rows(model: str, split: str, sweep: str, queries: int,
                   values: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Rows of a reference ranking without an adapter (no significance): ``values`` maps
    each ablation name (``first_stage``, ``random``, ``zero_shot``) to its metric means."""
    return [
        {
            "model": model,
            "adapter": "",
            "rank": 0,
            "targets": "",
            "variant": "",
            "step": 0,
            "sweep": sweep,
            "split": split,
            "ablation": ablation,
            "measure": measure,
            "value": value,
            "delta": None,
            "p_value": None,
            "p_adjusted": None,
            "significant": False,
            "queries": queries,
        }
        for ablation, means in values.items()
        for measure, value in means.items()
    ]


def first_stage_rows(split: str, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the first-stage ranking and, when present, of the random-reordering floor."""
    values = {FIRST_STAGE: summary["metrics"]}
    if RANDOM in summary:
        values[RANDOM] = summary[RANDOM]
    return reference_rows("", split, FIRST_STAGE, summary["queries"], values)


def zero_shot_rows(model: str, split: str, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a base model's zero-shot ranking (sweep and ablation ``zero_shot``)."""
    return reference_rows(model, split, ZERO_SHOT, summary["queries"],
                          {ZERO_SHOT: summary["metrics"]})


def convergence_rows(
    evaluations: list[dict[str, Any]], rule: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Table 2's rule per run, on the checkpoint curves of the rule's split and measure."""
    from lorascope.core.stats import convergence_step

    curves: dict[tuple[str, str], dict[int, float]] = {}
    meta: dict[tuple[str, str], dict[str, Any]] = {}
    for row in evaluations:
        if (
            row["sweep"] == CHECKPOINTS
            and row["ablation"] == FULL
            and row["split"] == rule["split"]
            and row["measure"] == rule["measure"]
        ):
            key = (row["model"], row["adapter"])
            curves.setdefault(key, {})[row["step"]] = row["value"]
            meta[key] = {"rank": row["rank"], "targets": row["targets"]}
    out = []
    for (model, adapter), curve in sorted(curves.items()):
        step = convergence_step(curve, rule["epsilon"])
        best = max(curve, key=lambda s: (curve[s], -s))
        out.append(
            {
                "model": model,
                "adapter": adapter,
                **meta[(model, adapter)],
                "split": rule["split"],
                "measure": rule["measure"],
                "epsilon": float(rule["epsilon"]),
                "convergence_step": step,
                "best_step": best,
                "value_at_convergence": curve[step],
                "best_value": curve[best],
            }
        )
    return out


def training_rows(model: str, adapter: str, train_log: Path) -> list[dict[str, Any]]:
    with open(train_log, newline="") as handle:
        return [
            {
                "model": model,
                "adapter": adapter,
                "step": int(row["step"]),
                "loss": float(row["loss"]),
                "lr": float(row["lr"]),
            }
            for row in csv.DictReader(handle)
        ]


def job_seconds(root: str | Path) -> dict[str, list[float]]:
    """Each job's seconds per rule, from the Snakemake ``benchmark:`` files under ``root``
    (``<rule>.tsv`` or ``<rule>/.../*.tsv``)."""
    root = Path(root)
    jobs: dict[str, list[float]] = {}
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            jobs.setdefault(rule, []).append(float(rows[-1]["s"]))
    return jobs


def wall_times(root: str | Path) -> dict[str, float]:
    """Seconds per rule, summed over its jobs' benchmark files (:func:`job_seconds`)."""
    return {rule: round(sum(s), 1) for rule, s in sorted(job_seconds(root).items())}


def concat_tables(paths: list[str | Path], contract: Contract) -> Any:
    """The per-job tables of one analysis (lens, anatomy) as one table."""
    import pyarrow as pa

    tables = [read_table(path, contract) for path in paths]
    return pa.concat_tables(tables) if tables else contract.schema.empty_table()


def analysis_tables(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Every registered analysis's summary tables ({table: rows or Arrow table}) and the rows
    they add to other tables (``evaluations``), from ``inputs["analyses"][name]``: one entry per
    job of the analysis (its run fields and output paths)."""
    out: dict[str, Any] = {}
    for analysis in ANALYSES:
        entries = list((inputs.get("analyses") or {}).get(analysis.name) or [])
        if analysis.summary:
            found = load(analysis.module("summary"), "collect")(entries)
        else:
            found = {name: concat_tables([e[name] for e in entries], contract)
                     for name, contract in analysis.tables.items()}
        for name, value in found.items():
            if name in out:
                out[name] = [*out[name], *value]
            else:
                out[name] = value
    return out


def summarize(
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    out_dir: str | Path,
) -> None:
    """Write the study summary.

    ``inputs``: ``evaluations`` (list of {job fields..., "summary": path}), ``first_stage``
    ({split: summary path}), ``training`` (list of {model, adapter, "log": path}),
    ``benchmarks`` (root folder of the benchmark files), ``models`` ({name: base dir}),
    ``zero_shot`` (list of {model, split, "summary": path}),
    ``analyses`` ({analysis: [entry, ...]}, see :func:`analysis_tables`).
    """
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    for split, path in inputs["first_stage"].items():
        rows += first_stage_rows(split, json.loads(Path(path).read_text()))
    scoring_precision: dict[str, int] = {}
    contrasts: list[dict[str, Any]] = []
    for job in inputs["evaluations"]:
        fields = {k: job[k] for k in JOB_FIELDS}
        summary = json.loads(Path(job["summary"]).read_text())
        rows += evaluation_rows(fields, summary)
        if job.get("metrics"):
            metrics = read_table(job["metrics"], METRICS).to_pandas()
            contrasts += contrast_rows(fields, metrics, params["contrasts"][job["sweep"]],
                                       params["significance"])
        said = _precision_text((summary.get("provenance") or {}).get("precision"))
        scoring_precision[said] = scoring_precision.get(said, 0) + 1
    for job in inputs.get("zero_shot") or []:
        rows += zero_shot_rows(job["model"], job["split"],
                               json.loads(Path(job["summary"]).read_text()))
    extra = analysis_tables(inputs)
    rows += extra.pop("evaluations", [])
    record = provenance.record(STAGE, params)
    write_rows(out / "evaluations.parquet", EVALUATIONS, rows, record)
    tables = summary_tables()
    for name, value in extra.items():
        if isinstance(value, list):
            write_rows(out / f"{name}.parquet", tables[name], value, record)
        else:
            write_table(out / f"{name}.parquet", value, tables[name], record)
    conv = convergence_rows(rows, params["convergence"])
    write_rows(out / "convergence.parquet", CONVERGENCE, conv, record)
    write_rows(out / "contrasts.parquet", CONTRASTS, contrasts, record)
    train_rows: list[dict[str, Any]] = []
    for run in inputs["training"]:
        train_rows += training_rows(run["model"], run["adapter"], Path(run["log"]))
    write_rows(out / "training_log.parquet", TRAINING_LOG, train_rows, record)
    study = {
        **params["study"],
        "models": _models(params["study"]["models"], inputs["models"]),
        "provenance": record,
        "wall_times": wall_times(inputs["benchmarks"]),
        "precision": {"training": _training_precision(inputs["training"]),
                      "scoring": scoring_precision},
        "inputs": {name: str(out / f"{name}.parquet") for name in tables},
    }
    fileio.write_json(out / STUDY_FILE, study)
    log.info("summary: %d evaluation rows, %d runs", len(rows), len(conv))


def _precision_text(block: Mapping[str, Any] | None) -> str:
    """``bf16 (auto: CPU has native bf16 (avx512_bf16))`` from a provenance precision block."""
    if not block:
        return "fp32 (not recorded)"
    return f"{block.get('resolved')} ({block.get('reason')})"


def _training_precision(runs: list[Mapping[str, Any]]) -> dict[str, str]:
    """``{model/adapter: precision}`` of every training run, from its training.json."""
    out = {}
    for run in runs:
        found = Path(run["log"]).parent / "training.json"
        block = None
        if found.is_file():
            block = (json.loads(found.read_text()).get("runtime") or {}).get("precision")
        out[f"{run['model']}/{run['adapter']}"] = _precision_text(
            block if isinstance(block, Mapping) else None)
    return out


def _models(models: Mapping[str, Any], base_dirs: Mapping[str, str]) -> dict[str, Any]:
    from lorascope.models.base import read_manifest

    out = {}
    for name, info in models.items():
        manifest = read_manifest(base_dirs[name]) or {}
        roles = manifest.get("roles", {})
        out[name] = {
            **info,
            "model_type": manifest.get("model_type"),
            "num_layers": manifest.get("num_layers"),
            "roles": [*roles.get("attn", []), *roles.get("mlp", [])],
            "parameters": manifest.get("parameters"),
        }
    return out
