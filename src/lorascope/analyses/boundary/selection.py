"""Choosing the boundary layer ``b`` (companion paper, arXiv 2503.23360): keep LoRA in layers
``0..b`` only, where ``b`` is the best boundary of a ``generate: boundary`` sweep.

:func:`select_boundary` reads the evaluate summaries of the sweep (ablations
``keep_layers_0_{b:02d}`` for ``b = 0..L-2``, and ``full`` = ``b = L-1``) and picks the ``b``
with the best validation metric. Ties go to the **smallest** ``b`` (fewer
LoRA layers for the same quality); values are compared as exact floats, so "tie" means
bit-for-bit equal aggregates, which is what identical rankings produce (both are means of
the same per-query values in the same order). Higher is better (nDCG, RR, AP). With several
summaries (e.g. several validation splits) a candidate's value is the plain mean of its
per-summary values.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from lorascope.core.names import FULL, parse_boundary_name

log = logging.getLogger(__name__)


class BoundaryError(ValueError):
    """Bad input to boundary selection or pruning; the message names the file."""


@dataclass(frozen=True)
class Candidate:
    """One boundary of the sweep: LoRA kept in layers ``0..b``.

    Attributes:
        b: the boundary layer (``num_layers - 1`` for ``full``).
        ablation: its name in the sweep (``keep_layers_0_03`` or ``full``).
        value: the selection value (mean over the summaries).
        values: the value in each summary, in the order of :attr:`Selection.sources`.
    """

    b: int
    ablation: str
    value: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class Selection:
    """The chosen boundary and everything it was chosen from.

    Attributes:
        b: the chosen boundary layer (LoRA kept in layers ``0..b``).
        ablation: the chosen candidate's ablation name.
        value: its selection value.
        measure: the measure compared.
        num_layers: the model's depth ``L`` (``b = L-1`` keeps every layer).
        candidates: every boundary of the sweep, by ``b``.
        sources: the summary files read.
        run: identifying fields of the summaries (model, adapter, step, sweep) and their splits.
        rule: the selection rule, in words.
    """

    b: int
    ablation: str
    value: float
    measure: str
    num_layers: int
    candidates: tuple[Candidate, ...]
    sources: tuple[str, ...]
    run: Mapping[str, Any] = field(default_factory=dict)
    rule: str = ("best mean value of the measure over the summaries, higher is better; "
                 "ties (exactly equal floats) go to the smallest b")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able builtins."""
        out = asdict(self)
        out["candidates"] = [
            {**asdict(c), "values": list(c.values)} for c in self.candidates
        ]
        out["sources"] = list(self.sources)
        out["run"] = dict(self.run)
        return out


def choose(points: Mapping[int, float]) -> int:
    """The selection rule on a boundary curve ``{b: value}``: the best value (higher is
    better); ties (exactly equal floats) go to the smallest b."""
    best = max(points.values())
    return min(b for b, value in points.items() if value == best)


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BoundaryError(f"{path}: no such boundary summary")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BoundaryError(f"{path}: not a JSON summary ({err})") from None
    if not isinstance(summary, Mapping) or not isinstance(summary.get("ablations"), Mapping):
        raise BoundaryError(f"{path}: not an evaluate summary (no 'ablations' mapping)")
    return dict(summary)


def _boundary_points(
    path: Path, summary: Mapping[str, Any], measure: str, num_layers: int | None
) -> tuple[dict[int, tuple[str, float]], int]:
    """``{b: (ablation, value)}`` of one summary, and the depth (given or inferred)."""
    ablations: Mapping[str, Any] = summary["ablations"]
    boundary = {name: b for name in ablations if (b := parse_boundary_name(name)) is not None}
    if not boundary:
        raise BoundaryError(
            f"{path}: no boundary ablations (keep_layers_0_<b>) among "
            f"{sorted(ablations)[:6]}; is this the summary of a `generate: boundary` sweep?"
        )
    if FULL not in ablations:
        raise BoundaryError(f"{path}: no '{FULL}' ablation (the b = L-1 candidate)")
    top = 0
    for name, b in boundary.items():
        zeroed = [int(pair[0]) for pair in ablations[name].get("zeroed") or []]
        if "zeroed" in ablations[name] and (not zeroed or min(zeroed) <= b):
            raise BoundaryError(
                f"{path}: ablation {name!r} should zero LoRA in layers above {b} only, but "
                f"zeroes layers {sorted(set(zeroed))}"
            )
        top = max(top, max(zeroed, default=b + 1))
    depth = num_layers if num_layers is not None else top + 1
    bad = sorted(b for b in boundary.values() if not 0 <= b <= depth - 2)
    if bad:
        raise BoundaryError(
            f"{path}: boundary b = {bad[-1]} out of range for a model of {depth} layers "
            f"(keep_layers_0_<b> needs 0 <= b <= {depth - 2}; b = {depth - 1} is '{FULL}')"
        )
    points: dict[int, tuple[str, float]] = {}
    for name, b in [*boundary.items(), (FULL, depth - 1)]:
        values = ablations[name].get("metrics") or {}
        if measure not in values:
            raise BoundaryError(
                f"{path}: ablation {name!r} has no {measure!r} metric "
                f"(it has: {', '.join(sorted(values)) or 'none'})"
            )
        value = values[measure]
        if value is None or math.isnan(value):  # NaN never wins and never ties
            raise BoundaryError(f"{path}: ablation {name!r} has no value for {measure!r}")
        points[b] = (name, float(value))
    return points, depth


def select_boundary(
    summaries: str | Path | Sequence[str | Path],
    measure: str,
    *,
    num_layers: int | None = None,
) -> Selection:
    """The boundary ``b`` with the best ``measure`` in the boundary sweep's summaries.

    Args:
        summaries: one evaluate ``summary.json`` of a ``generate: boundary`` sweep, or several
            of the same run (model, adapter, step) on different validation splits.
        measure: the metric name as in the summaries (``nDCG@10``); higher is better.
        num_layers: the model's depth ``L``; inferred from the deepest zeroed layer when not
            given (exact when the adapter trains the top layer).

    Raises:
        BoundaryError: naming the file - no boundary ablations, no ``full``, a missing
            measure, a boundary out of range, or summaries of different runs / boundaries.
    """
    paths = [Path(summaries)] if isinstance(summaries, (str, Path)) else [Path(p) for p in summaries]
    if not paths:
        raise BoundaryError("select_boundary needs at least one summary file")
    per_source: list[dict[int, tuple[str, float]]] = []
    depth: int | None = num_layers
    run: dict[str, Any] = {}
    splits: list[Any] = []
    for path in paths:
        summary = _read_summary(path)
        points, found_depth = _boundary_points(path, summary, measure, depth)
        depth = found_depth
        ident = {k: summary.get(k) for k in ("model", "adapter", "step", "sweep")}
        if run and ident != run:
            raise BoundaryError(f"{path}: summary of run {ident}, but {paths[0]} is of {run}")
        if per_source and set(points) != set(per_source[0]):
            raise BoundaryError(
                f"{path}: boundaries {sorted(points)} differ from those of {paths[0]} "
                f"({sorted(per_source[0])})"
            )
        run = ident
        splits.append(summary.get("split"))
        per_source.append(points)
    assert depth is not None
    candidates = tuple(
        Candidate(b, per_source[0][b][0], fmean(p[b][1] for p in per_source),
                  tuple(p[b][1] for p in per_source))
        for b in sorted(per_source[0])
    )
    b = choose({c.b: c.value for c in candidates})
    chosen = next(c for c in candidates if c.b == b)
    log.info("boundary b = %d of %d layers (%s %s = %.4f; full %.4f)", chosen.b, depth,
             chosen.ablation, measure, chosen.value, candidates[-1].value)
    return Selection(b=chosen.b, ablation=chosen.ablation, value=chosen.value, measure=measure,
                     num_layers=depth, candidates=candidates,
                     sources=tuple(str(p) for p in paths), run={**run, "splits": splits})
