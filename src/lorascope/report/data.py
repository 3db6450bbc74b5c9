"""The report's inputs: the study summary tables, study.json and the reference values.

Every input is optional: a study that did not ask for a stage has no rows (or no file) for it,
and the report leaves the parts that need them out with a note. Files that exist are read
through their contract, so a malformed summary fails loudly with the file named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from lorascope.analyses.registry import summary_tables
from lorascope.core import contracts
from lorascope.core.contrasts import CONTRASTS
from lorascope.core.names import (
    FIRST_STAGE,
    FULL,
    PAPER_SUMMARY_TABLES,
    STUDY_FILE,
    ZERO_SHOT,
    parse_layer_role_name,
)

PLAIN_VARIANTS = ("", "lora")


def summary_file(name: str) -> str:
    """The file of a summary table in the summary folder."""
    return f"{name}.parquet"


def _empty(contract: contracts.Contract) -> pd.DataFrame:
    return contract.schema.empty_table().to_pandas()


@dataclass
class ReportInputs:
    """Everything the report reads, already loaded."""

    summary_dir: Path
    evaluations: pd.DataFrame
    convergence: pd.DataFrame
    training_log: pd.DataFrame
    study: dict[str, Any]
    files: dict[str, Path | None] = field(default_factory=dict)
    #: Pairs of a sweep's ablations tested against each other (``sweeps.<s>.compare``).
    contrasts: pd.DataFrame = field(default_factory=lambda: _empty(CONTRASTS))
    #: The analyses' summary tables by name (:func:`table` gives an empty one when missing).
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        """An analysis's summary table (empty, with its columns, when the summary has none)."""
        if name not in self.tables:
            self.tables[name] = _empty(summary_tables()[name])
        return self.tables[name]

    # ---- study.json accessors -----------------------------------------------------------

    def model_info(self, model: str) -> dict[str, Any]:
        return dict((self.study.get("models") or {}).get(model) or {})

    def model_label(self, model: str) -> str:
        return str(self.model_info(model).get("label") or model)

    def mechanics_only(self, model: str) -> bool:
        return bool(self.model_info(model).get("mechanics_only", False))

    def num_layers(self, model: str) -> int | None:
        n = self.model_info(model).get("num_layers")
        return int(n) if n is not None else None

    def roles(self, model: str) -> list[str]:
        return [str(r) for r in self.model_info(model).get("roles") or []]

    def adapter_info(self, model: str, adapter: str) -> dict[str, Any]:
        """``{rank, targets, variant}`` of one adapter from study.json (``{}``: not listed)."""
        return dict(((self.study.get("adapters") or {}).get(model) or {}).get(adapter) or {})

    def analysis(self, name: str) -> dict[str, Any] | None:
        """The study's ``analyses.<name>`` config section (None: the analysis is off)."""
        analyses = self.study.get("analyses")
        if not isinstance(analyses, dict) or analyses.get(name) is None:
            return None
        return dict(analyses[name])

    def missing_note(self, name: str, analysis: str | None = None) -> str:
        """Why a summary table has nothing to show, in words (for an Omitted note)."""
        filename = summary_file(name)
        if analysis is not None and "analyses" in self.study and self.analysis(analysis) is None:
            return f"the study config has no `analyses.{analysis}`"
        if self.files.get(name) is None:
            return f"the summary has no `{filename}`"
        return f"`{filename}` has no rows"

    def split_info(self, split: str) -> dict[str, Any]:
        return dict((self.study.get("splits") or {}).get(split) or {})

    def sweep_ablations(self, sweep: str, model: str) -> dict[str, list[tuple[int, str]]] | None:
        """The (layer, role) modules each ablation of ``sweep`` zeroes for ``model``."""
        per_model = (self.study.get("sweeps") or {}).get(sweep)
        if per_model is None or model not in per_model:
            return None
        return {
            name: [(int(layer), str(role)) for layer, role in (zeroed or [])]
            for name, zeroed in (per_model[model] or {}).items()
        }

    def has_sweep(self, sweep: str) -> bool:
        if sweep in (self.study.get("sweeps") or {}):
            return True
        return bool((self.evaluations["sweep"] == sweep).any())

    def source_path(self, name: str) -> str:
        """How the provenance block names one summary input."""
        recorded = (self.study.get("inputs") or {}).get(name)
        if recorded:
            return str(recorded)
        found = self.files.get(name)
        return str(found) if found is not None else summary_file(name)

    # ---- evaluations helpers --------------------------------------------------------------

    def first_stage(self, split: str, measure: str, ablation: str = FIRST_STAGE) -> float | None:
        """A baseline value: the first-stage ranking, or ``ablation="random"`` (its floor)."""
        ev = self.evaluations
        rows = ev[
            (ev["sweep"] == FIRST_STAGE)
            & (ev["ablation"] == ablation)
            & (ev["split"] == split)
            & (ev["measure"] == measure)
        ]
        if rows.empty or pd.isna(rows["value"].iloc[0]):
            return None
        return float(rows["value"].iloc[0])

    def zero_shot(self, model: str, split: str, measure: str) -> float | None:
        """A base model's own zero-shot value (None: the model has no zero-shot ranking)."""
        ev = self.evaluations
        rows = ev[(ev["sweep"] == ZERO_SHOT) & (ev["model"] == model) & (ev["split"] == split)
                  & (ev["measure"] == measure)]
        if rows.empty or pd.isna(rows["value"].iloc[0]):
            return None
        return float(rows["value"].iloc[0])

    def split_queries(self, split: str) -> int | None:
        ev = self.evaluations
        rows = ev[(ev["split"] == split) & ev["queries"].notna()]
        if rows.empty:
            q = self.split_info(split).get("queries")
            return int(q) if q is not None else None
        return int(rows["queries"].max())


# ------------------------------------------------------------ per-(layer, role) ablation drops

def _module_of(
    name: str, zeroed: dict[str, list[tuple[int, str]]] | None
) -> tuple[int, str] | None:
    """The one (layer, role) module an ablation zeroes (None: several or unknown)."""
    if zeroed is not None and name in zeroed:
        mods = zeroed[name]
        return mods[0] if len(mods) == 1 else None
    return parse_layer_role_name(name)


def pick_split(splits: list[str] | set[str], preferred: list[str]) -> str | None:
    """The first of ``preferred`` among ``splits``, else the first (sorted) split."""
    for s in preferred:
        if s in splits:
            return s
    return sorted(splits)[0] if splits else None


@dataclass
class LayerRoleDrops:
    """The drops of one model's single-module ablations (an ``each_layer_role`` sweep) at the
    sweep's last step on one split: ``cells[(layer, role)] = (full - ablated, significant)``."""

    model: str
    adapter: str
    split: str
    step: int
    measure: str
    full_value: float | None
    cells: dict[tuple[int, str], tuple[float, bool]]


def layer_role_drops(
    inputs: ReportInputs, sweep: str, adapter: str, measure: str, model: str,
    preferred_splits: list[str],
) -> LayerRoleDrops | None:
    """The per-(layer, role) drops of ``model`` in ``sweep`` (None: the sweep has no rows of
    it). The split is the first of ``preferred_splits`` the sweep ran on; the drop is
    ``-delta`` (or ``full - value`` where the summary has no delta)."""
    ev = inputs.evaluations
    rows = ev[(ev["sweep"] == sweep) & (ev["adapter"] == adapter) & (ev["measure"] == measure)
              & (ev["model"] == model)]
    if rows.empty:
        return None
    split = pick_split(list(dict.fromkeys(rows["split"])), preferred_splits)
    rows = rows[rows["split"] == split]
    step = int(rows["step"].max())
    rows = rows[rows["step"] == step]
    full = rows[rows["ablation"] == FULL]
    full_value = float(full["value"].iloc[0]) if not full.empty else None
    zeroed = inputs.sweep_ablations(sweep, model)
    cells: dict[tuple[int, str], tuple[float, bool]] = {}
    for _, r in rows.iterrows():
        if r["ablation"] == FULL:
            continue
        pos = _module_of(r["ablation"], zeroed)
        if pos is None:
            continue
        if not pd.isna(r["delta"]):
            drop = -float(r["delta"])
        elif full_value is not None and not pd.isna(r["value"]):
            drop = full_value - float(r["value"])
        else:
            continue
        cells[pos] = (drop, bool(r["significant"]))
    return LayerRoleDrops(model, adapter, str(split), step, measure, full_value, cells)


def load_inputs(summary_dir: str | Path) -> ReportInputs:
    """Read the summary tables and study.json from ``summary_dir`` (missing ones are empty;
    ``files[name]`` is None for those)."""
    summary_dir = Path(summary_dir)
    frames: dict[str, pd.DataFrame] = {}
    files: dict[str, Path | None] = {}
    for key, contract in summary_tables().items():
        path = summary_dir / summary_file(key)
        if path.is_file():
            frame = contracts.read_table(path, contract).to_pandas()
            files[key] = path
        else:
            frame = _empty(contract)
            files[key] = None
        frames[key] = frame
    study_path = summary_dir / STUDY_FILE
    study: dict[str, Any] = {}
    if study_path.is_file():
        study = json.loads(study_path.read_text())
        files["study"] = study_path
    else:
        files["study"] = None
    ev = frames["evaluations"]
    ev["significant"] = ev["significant"].fillna(False).astype(bool)
    for col in ("model", "adapter", "targets", "sweep", "split", "ablation", "measure"):
        ev[col] = ev[col].fillna("")
    if "variant" in ev:
        ev["variant"] = ev["variant"].fillna("")
    return ReportInputs(
        summary_dir=summary_dir,
        evaluations=ev,
        convergence=frames["convergence"],
        training_log=frames["training_log"],
        study=study,
        files=files,
        contrasts=frames[CONTRASTS.name],
        tables={k: v for k, v in frames.items()
                if k not in PAPER_SUMMARY_TABLES and k != CONTRASTS.name},
    )


# ------------------------------------------------------------------------ reference values


def load_reference(name: str | None) -> dict[str, Any] | None:
    """The published values shipped as ``lorascope/reference/<name>.yaml`` (None: none)."""
    if not name:
        return None
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"reference {name!r} is not a reference name")
    text = resources.files("lorascope").joinpath("reference", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def reference_applies(reference: dict[str, Any] | None, split: str, inputs: ReportInputs) -> bool:
    """Whether the reference values (one test collection) are the ones of ``split``."""
    if not reference:
        return False
    if split == reference.get("split"):
        return True
    dataset = inputs.split_info(split).get("dataset")
    return dataset is not None and dataset in (reference.get("datasets") or [])
