"""What the report knows about each trained adapter (rank, targets, LoRA variant) and the
small choices the "beyond the paper" sections share: the main measure, the split order, which
adapter of a model to show when a section needs one.

An adapter is described by study.json's ``adapters`` block when the summary has it, else by
its evaluation rows, else by its name (``r<rank>-<targets>[-<variant>]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lorascope.report.data import PLAIN_VARIANTS, ReportInputs, pick_split
from lorascope.report.model import MECHANICS_NOTE

_NAME = re.compile(r"^r(\d+)-([^-]+)(?:-(.+))?$")
VARIANT_NAMES = {
    "lora": "LoRA",
    "dora": "DoRA",
    "rslora": "rsLoRA",
    "pissa": "PiSSA",
    "olora": "OLoRA",
    "eva": "EVA",
}
DEFAULT_MEASURE = "nDCG@10"


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of one model: LoRA rank, target set name and variant label (``""`` =
    plain LoRA; ``"dora_rslora"`` = DoRA with rsLoRA scaling)."""

    name: str
    rank: int | None
    targets: str
    variant: str

    @property
    def plain(self) -> bool:
        return self.variant in PLAIN_VARIANTS

    @property
    def run_key(self) -> tuple[str, int]:
        """What variants of the same experiment share: (targets, rank)."""
        return (self.targets, self.rank if self.rank is not None else 0)


def variant_key(variant: Any) -> str:
    """A variant as the summary writes it (``"dora_rslora"``; ``""`` for plain LoRA), from a
    string or a list of names."""
    if variant is None:
        return ""
    if isinstance(variant, str):
        names = [v for v in re.split(r"[_+,\s]+", variant) if v]
    else:
        names = [str(v) for v in variant]
    names = [n for n in names if n != "lora"]
    return "_".join(sorted(names))


def variant_label(variant: Any) -> str:
    """``""`` -> ``LoRA``; ``dora_rslora`` -> ``DoRA + rsLoRA``."""
    key = variant_key(variant)
    if not key:
        return VARIANT_NAMES["lora"]
    return " + ".join(VARIANT_NAMES.get(n, n) for n in key.split("_"))


def adapter_spec(inputs: ReportInputs, model: str, adapter: str) -> AdapterSpec:
    info = inputs.adapter_info(model, adapter)
    if info:
        rank = info.get("rank")
        return AdapterSpec(adapter, int(rank) if rank is not None else None,
                           str(info.get("targets") or ""), variant_key(info.get("variant")))
    ev = inputs.evaluations
    rows = ev[(ev["model"] == model) & (ev["adapter"] == adapter)]
    if not rows.empty:
        row = rows.iloc[0]
        variant = row["variant"] if "variant" in rows else ""
        return AdapterSpec(adapter, int(row["rank"]), str(row["targets"]),
                           variant_key(variant if not pd.isna(variant) else ""))
    m = _NAME.match(adapter)
    if m:
        return AdapterSpec(adapter, int(m.group(1)), m.group(2), variant_key(m.group(3)))
    return AdapterSpec(adapter, None, "", "")


def model_adapters(inputs: ReportInputs, model: str, among: Iterable[str] | None = None
                   ) -> list[AdapterSpec]:
    """The adapters of ``model`` (study.json's, else those with evaluation rows), or the
    given names, ordered by targets, rank, variant."""
    if among is None:
        names = set((inputs.study.get("adapters") or {}).get(model) or {})
        ev = inputs.evaluations
        names |= set(ev.loc[ev["model"] == model, "adapter"]) - {""}
    else:
        names = set(among)
    specs = [adapter_spec(inputs, model, n) for n in names]
    return sorted(specs, key=lambda s: (s.targets, s.rank or 0, not s.plain, s.variant, s.name))


def showcase_adapter(specs: list[AdapterSpec], preferred: str | None = None) -> AdapterSpec | None:
    """The adapter a section shows for a model: ``preferred`` if present, else the plain LoRA
    adapter of the highest rank that trains ``all`` modules, else the highest-rank one."""
    if not specs:
        return None
    for spec in specs:
        if preferred and spec.name == preferred:
            return spec

    def key(s: AdapterSpec) -> tuple:
        return (s.targets == "all", s.plain, s.rank or 0, s.name)

    return max(specs, key=key)


def showcase_rows(data: pd.DataFrame, model: str, inputs: ReportInputs,
                  preferred_adapter: Any, preferred_splits: list[str]
                  ) -> tuple[str, str, pd.DataFrame] | None:
    """An analysis table's rows a section shows for ``model``: its showcase adapter
    (:func:`showcase_adapter`, ``preferred_adapter`` first) on the first of
    ``preferred_splits`` it has; ``(adapter, split, rows)``, or None without rows."""
    rows = data[data["model"] == model]
    if rows.empty:
        return None
    spec = showcase_adapter(model_adapters(inputs, model, set(rows["adapter"])),
                            str(preferred_adapter) if preferred_adapter else None)
    if spec is None:
        return None
    rows = rows[rows["adapter"] == spec.name]
    split = pick_split(list(dict.fromkeys(rows["split"])), preferred_splits)
    return spec.name, str(split), rows[rows["split"] == split]


def run_notes(views: Sequence[Any], inputs: ReportInputs,
              detail: Callable[[Any], str] = lambda view: "") -> list[str]:
    """The closing notes of a section that shows one run per model (``views`` with ``model``,
    ``adapter`` and ``split``): which run each model shows (``detail(view)`` appended), and
    the mechanics note when a model is a mechanics-only one."""
    runs = "; ".join(f"{inputs.model_label(v.model)}: `{v.adapter}` on `{v.split}`{detail(v)}"
                     for v in views)
    notes = [f"Runs: {runs}."]
    if any(inputs.mechanics_only(v.model) for v in views):
        notes.append(MECHANICS_NOTE)
    return notes


def common_split(views: Sequence[Any]) -> str:
    """The split every view shows, or "" when they differ."""
    return views[0].split if len({v.split for v in views}) == 1 else ""


def main_measure(params: Mapping[str, Any]) -> str:
    """The study's main measure: Table 2's (= the convergence measure)."""
    for key in ("table2", "boundary", "heatmap"):
        cfg = params.get(key) or {}
        if cfg.get("measure"):
            return str(cfg["measure"])
    return DEFAULT_MEASURE


def split_order(params: Mapping[str, Any]) -> list[str]:
    """The main split, then the companion splits."""
    return [str(params.get("main_split") or "")] + [str(s) for s in
                                                    params.get("companion_splits") or []]


def sort_splits(splits: Iterable[str], params: Mapping[str, Any]) -> list[str]:
    order = split_order(params)
    return sorted(set(splits), key=lambda s: (order.index(s) if s in order else len(order), s))


def measure_pairs(items: Any) -> list[tuple[str, str]]:
    """``[[label, measure], ...]``, ``{label: measure}`` or ``[measure, ...]`` as pairs."""
    if not items:
        return []
    if isinstance(items, Mapping):
        return [(str(k), str(v)) for k, v in items.items()]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, item))
        else:
            out.append((str(item[0]), str(item[1])))
    return out
