"""Boundary-layer pruning (companion paper, arXiv 2503.23360): choose ``b`` on validation,
export the adapter with LoRA only in layers ``0..b``, compare pruned with full on test splits.

Three steps, two workflow stages:

1. :func:`select_boundary` reads the evaluate summaries of a ``generate: boundary`` sweep
   (ablations ``keep_layers_0_{b:02d}`` for ``b = 0..L-2``, and ``full`` = ``b = L-1``) and
   picks the ``b`` with the best validation metric. Ties go to the **smallest** ``b`` (fewer
   LoRA layers for the same quality); values are compared as exact floats, so "tie" means
   bit-for-bit equal aggregates, which is what identical rankings produce (both are means of
   the same per-query values in the same order). Higher is better (nDCG, RR, AP). With several
   summaries (e.g. several validation splits) a candidate's value is the plain mean of its
   per-summary values.
2. :func:`export_pruned` writes a plain peft adapter holding the LoRA tensors of layers
   ``0..b`` only, and the trained score head (``modules_to_save``) untouched.
   ``adapter_config.json``'s ``target_modules`` becomes the explicit list of the kept modules'
   full names (as training writes it), so ``PeftModel.from_pretrained`` creates no LoRA layer
   above ``b`` - the upper layers run as plain base linears, which is both exact (== the
   in-place ablation ``keep_layers_0_b``, tested) and the inference saving the paper is after.
   For ``b = L-1`` nothing is dropped and both files are copied byte for byte.
3. :func:`compare` scores a test split with the full and the pruned adapter (each loaded as a
   plain, unmerged peft adapter, one after the other, on the same tokenised batches), times
   each pass after a warm-up, and writes scores / metrics / summary in the shape of the
   evaluate stage, with ablations ``full`` and ``pruned``.

Stages: :func:`prune` (1 + 2, also writes ``selection.json`` into the pruned adapter's folder)
and :func:`compare` (3).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from lorascope import adapters, fileio, provenance
from lorascope.ablation import FULL, Ablation, boundary_name, parse_boundary_name
from lorascope.roles import ArchitectureRoles, module_name, parse_module_name, roles_for

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRUNE_STAGE = "prune_adapter"
COMPARE_STAGE = "compare_pruned"
PRUNED = "pruned"
SELECTION = "selection.json"
WEIGHTS, CONFIG = adapters.ADAPTER_FILES
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.lora_[A-Za-z_]+(?:\.|$)")

Module = tuple[int, str]


class BoundaryError(ValueError):
    """Bad input to boundary selection or pruning; the message names the file."""


# --------------------------------------------------------------------------- selection


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


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class _TensorInfo:
    key: str
    numel: int
    module: Module | None  # (layer, role) of a LoRA tensor; None for the head


def _base_info(base_dir: Path) -> tuple[dict[str, Any], ArchitectureRoles, int]:
    from lorascope.models.base import read_manifest

    manifest = read_manifest(base_dir)
    if manifest is None:
        raise BoundaryError(f"{base_dir}: not a prepared base model (no base_manifest.json)")
    try:
        return manifest, roles_for(manifest["model_type"]), int(manifest["num_layers"])
    except KeyError as err:
        raise BoundaryError(f"{base_dir}/base_manifest.json lacks {err}") from None


def _tensor_table(weights: Path, arch: ArchitectureRoles) -> list[_TensorInfo]:
    """Every tensor of an adapter file with its size and (layer, role), from the header."""
    from safetensors import safe_open

    if not weights.is_file():
        raise BoundaryError(f"{weights}: no such adapter weights file")
    table: list[_TensorInfo] = []
    with safe_open(str(weights), framework="pt") as handle:
        names = handle.keys()
        for key in names:
            numel = 1
            for dim in handle.get_slice(key).get_shape():
                numel *= int(dim)
            match = _LORA_KEY.match(key)
            module = None
            if match is not None:
                module = parse_module_name(arch, match.group("module"))
                if module is None:
                    raise BoundaryError(
                        f"{weights}: LoRA tensor {key!r} is on no {arch.model_type} role "
                        "module; cannot tell which layer it belongs to"
                    )
            table.append(_TensorInfo(key, numel, module))
    return table


def _source_record(adapter_dir: Path, base_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The source adapter's manifest (verified against the base) and its identity record."""
    manifest_path = adapter_dir / adapters.MANIFEST
    manifest = adapters.verify(adapter_dir, base_dir) if manifest_path.is_file() else None
    files = adapters.file_digests(
        adapter_dir, [n for n in adapters.ADAPTER_FILES if (adapter_dir / n).is_file()])
    record = {
        "adapter_dir": str(adapter_dir),
        "files": files,
        "manifest_sha256": fileio.sha256_file(manifest_path) if manifest is not None else None,
    }
    return manifest, record


def _pruned_config(config: Mapping[str, Any], arch: ArchitectureRoles,
                   kept: Sequence[Module], b: int) -> dict[str, Any]:
    """adapter_config with ``target_modules`` = the kept modules' full names, and per-module
    rank/alpha patterns of dropped modules removed."""
    out = dict(config)
    out["target_modules"] = sorted(module_name(arch, layer, role) for layer, role in kept)
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = out.get(key)
        if isinstance(pattern, Mapping):
            out[key] = {name: value for name, value in pattern.items()
                        if (m := parse_module_name(arch, name)) is None or m[0] <= b}
    if isinstance(out.get("layers_to_transform"), list):
        out["layers_to_transform"] = [i for i in out["layers_to_transform"] if i <= b]
    return out


def export_pruned(
    adapter_dir: str | Path,
    base_dir: str | Path,
    b: int,
    out_dir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    selection: Selection | None = None,
) -> dict[str, Any]:
    """Write ``out_dir``: the adapter with LoRA in layers ``0..b`` only, plus ``manifest.json``
    (and ``selection.json`` when a selection is given). Returns the manifest.

    The output is a plain peft adapter (``adapter_model.safetensors`` +
    ``adapter_config.json``) that ``PeftModel.from_pretrained`` loads onto the base; its
    manifest has the fields :func:`lorascope.adapters.verify` checks (``files``,
    ``base_model``) plus ``pruned`` (b, layers kept/dropped, modules dropped, LoRA parameters
    kept/removed and the fraction removed, head parameters) and ``source`` (the source
    adapter's folder and sha256s).

    Raises:
        BoundaryError: ``b`` outside ``0..L-1`` (naming the base manifest), no LoRA left at or
            below ``b``, no trained score head in the adapter, or a base without manifest.
        AdapterMismatch: the adapter was extracted for another base model.
    """
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    base, arch, depth = _base_info(base_dir)
    if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < depth:
        raise BoundaryError(
            f"boundary b = {b!r} out of range: {base_dir}/base_manifest.json gives "
            f"{depth} layers, so 0 <= b <= {depth - 1}"
        )
    source_manifest, source = _source_record(adapter_dir, base_dir)
    config_path = adapter_dir / CONFIG
    if not config_path.is_file():
        raise BoundaryError(f"{adapter_dir}: not a peft adapter (no {CONFIG})")
    config = json.loads(config_path.read_text())
    tensors = _tensor_table(adapter_dir / WEIGHTS, arch)
    lora = [t for t in tensors if t.module is not None]
    head = [t for t in tensors if t.module is None]
    if not head:
        raise BoundaryError(
            f"{adapter_dir / WEIGHTS}: no trained score head (modules_to_save "
            f"{list(arch.head_modules)}); a pruned adapter without it would score with an "
            "untrained head"
        )
    modules = sorted({t.module for t in lora if t.module is not None})
    kept_modules = [m for m in modules if m[0] <= b]
    dropped_modules = [m for m in modules if m[0] > b]
    if not kept_modules:
        raise BoundaryError(
            f"{adapter_dir}: no LoRA modules in layers 0..{b} (the adapter trains layers "
            f"{sorted({m[0] for m in modules})}); nothing would be left"
        )
    drop = {t.key for t in lora if t.module is not None and t.module[0] > b}
    removed = sum(t.numel for t in lora if t.key in drop)
    total = sum(t.numel for t in lora)
    pruned_info = {
        "b": b,
        "num_layers": depth,
        "layers_kept": list(range(b + 1)),
        "layers_dropped": list(range(b + 1, depth)),
        "modules_kept": len(kept_modules),
        "modules_dropped": [[layer, role] for layer, role in dropped_modules],
        "params": {
            "lora_total": total,
            "lora_kept": total - removed,
            "lora_removed": removed,
            "fraction_removed": removed / total if total else 0.0,
            "head": sum(t.numel for t in head),
        },
    }
    with fileio.atomic_dir(out_dir) as tmp:
        if not dropped_modules:  # b covers every trained layer: the adapter itself
            for name in adapters.ADAPTER_FILES:
                shutil.copy2(adapter_dir / name, tmp / name)
        else:
            _write_pruned_weights(adapter_dir / WEIGHTS, tmp / WEIGHTS, drop)
            fileio.write_text(tmp / CONFIG, json.dumps(
                _pruned_config(config, arch, kept_modules, b), indent=2, sort_keys=True) + "\n")
        manifest = {
            "files": adapters.file_digests(tmp),
            "base_model": (source_manifest or {}).get("base_model") or {
                "source": base.get("source"),
                "revision": base.get("revision"),
                "weights_sha256": base.get("weights_sha256"),
                "model_type": base.get("model_type"),
            },
            "step": (source_manifest or {}).get("step"),
            "train_loss": (source_manifest or {}).get("train_loss"),
            "pruned": pruned_info,
            "source": source,
            **provenance.record(PRUNE_STAGE, dict(params or {"b": b})),
        }
        if selection is not None:
            manifest["selection"] = {"measure": selection.measure, "value": selection.value,
                                     "sources": list(selection.sources)}
            fileio.write_json(tmp / SELECTION, {**selection.to_dict(),
                                                "provenance": provenance.record(
                                                    PRUNE_STAGE, dict(params or {}))})
        fileio.write_json(tmp / adapters.MANIFEST, manifest)
    log.info("pruned %s at b = %d: %d of %d LoRA modules dropped, %.1f%% of LoRA parameters "
             "removed -> %s", adapter_dir, b, len(dropped_modules), len(modules),
             100 * pruned_info["params"]["fraction_removed"], out_dir)
    return manifest


def _write_pruned_weights(source: Path, dest: Path, drop: set[str]) -> None:
    """Copy the safetensors file without the ``drop`` tensors, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        names = handle.keys()
        kept = {key: handle.get_tensor(key) for key in names if key not in drop}
    save_file(kept, str(dest), metadata=metadata)


# --------------------------------------------------------------------------- stage: prune


def prune(
    params: Mapping[str, Any],
    boundary_summary: str | Path | Sequence[str | Path],
    adapter_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Select ``b`` from the boundary sweep's validation summaries and export the pruned
    adapter into ``out_dir`` (with ``selection.json``). Returns the pruned adapter's manifest.

    ``params``: ``{measure: "nDCG@10"}`` (required) plus any identifying fields (model,
    adapter, step, sweep), recorded in the provenance.
    """
    measure = params.get("measure")
    if not isinstance(measure, str) or not measure:
        raise BoundaryError("prune params: 'measure' must be a metric name such as 'nDCG@10'")
    _, _, depth = _base_info(Path(base_dir))
    selection = select_boundary(boundary_summary, measure, num_layers=depth)
    return export_pruned(adapter_dir, base_dir, selection.b, out_dir, params=params,
                         selection=selection)


# --------------------------------------------------------------------------- stage: compare


@dataclass(frozen=True)
class TimingSettings:
    """How :func:`compare` times the two scoring passes.

    Attributes:
        repeats: timed passes per adapter; the fastest is reported (best-of-n: the least
            disturbed by other load on the machine). Scores come from the first pass.
        warmup_batches: untimed batches scored first with each adapter (kernel selection,
            allocator and cache warm-up), taken from the start of the same batch plan.
        check_ablation: also score the in-place ablation ``keep_layers_0_b`` of the full
            adapter and require the pruned adapter to reproduce it (within ``tolerance``).
        tolerance: absolute + relative tolerance of that check.
    """

    repeats: int = 1
    warmup_batches: int = 1
    check_ablation: bool = True
    tolerance: float = 1e-5

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TimingSettings:
        raw = dict(params.get("timing") or {})
        unknown = sorted(set(raw) - {"repeats", "warmup_batches", "check_ablation", "tolerance"})
        if unknown:
            raise ValueError(f"compare params: unknown keys {[f'timing.{k}' for k in unknown]}")
        settings = cls(repeats=int(raw.get("repeats", cls.repeats)),
                       warmup_batches=int(raw.get("warmup_batches", cls.warmup_batches)),
                       check_ablation=bool(raw.get("check_ablation", cls.check_ablation)),
                       tolerance=float(raw.get("tolerance", cls.tolerance)))
        if settings.repeats < 1 or settings.warmup_batches < 0 or settings.tolerance < 0:
            raise ValueError("compare params: timing.repeats must be >= 1, "
                             "timing.warmup_batches and timing.tolerance >= 0")
        return settings


class PrunedMismatch(RuntimeError):
    """The pruned adapter does not reproduce the in-place ablation of the full adapter."""


def _pruned_manifest(pruned_dir: Path, adapter_dir: Path, base_dir: Path) -> dict[str, Any]:
    manifest = adapters.verify(pruned_dir, base_dir)
    info = manifest.get("pruned")
    if not isinstance(info, Mapping):
        raise BoundaryError(f"{pruned_dir}/{adapters.MANIFEST}: not a pruned adapter "
                            "(no 'pruned' block)")
    want = (manifest.get("source") or {}).get("files") or {}
    have = adapters.file_digests(adapter_dir, want)
    if want != have:
        raise adapters.AdapterMismatch(
            f"{pruned_dir} was pruned from another adapter than {adapter_dir} "
            f"(source sha256s differ: {sorted(k for k in want if want[k] != have.get(k))})"
        )
    return manifest


def _timed(prepared: Any, warmup: Any, model: torch.nn.Module, device: str, name: str,
           timing: TimingSettings, progress: bool) -> tuple[dict[tuple[str, str], float],
                                                            dict[str, Any]]:
    """Warm up, then score ``repeats`` times; the first pass's scores, the fastest time."""
    if warmup is not None:
        warmup.score(model, device=device, progress=False, desc=f"{name} warm-up")
    scores: dict[tuple[str, str], float] | None = None
    passes: list[float] = []
    stats: Any = None
    for i in range(timing.repeats):
        _sync(device)
        t0 = time.perf_counter()
        run = prepared.score(model, device=device, progress=progress, desc=name)
        _sync(device)
        passes.append(time.perf_counter() - t0)
        if scores is None:
            scores, stats = run, prepared.last_stats
    assert scores is not None and stats is not None
    seconds = min(passes)
    log.info("%-8s %d pairs in %.3fs (best of %d; %.1f pairs/s)", name, len(scores), seconds,
             len(passes), len(scores) / max(seconds, 1e-9))
    return scores, {**stats.to_dict(), "seconds": round(seconds, 6),
                    "seconds_all": [round(s, 6) for s in passes],
                    "plan_version": prepared.plan_version,
                    "energy_kept": None}  # evaluate's field for SVD-truncated ablations


def _warmup_pairs(prepared: Any, tokenizer: Any, arch: ArchitectureRoles,
                  queries: Mapping[str, str], candidates: Sequence[tuple[str, str, str]],
                  settings: Any, batches: int) -> Any:
    """The pairs of the plan's first ``batches`` batches (the longest ones), prepared on their
    own so that a warm-up pass runs the same shapes without touching the timed plan."""
    from lorascope.scoring import PreparedPairs

    if batches < 1:
        return None
    index = [i for batch in prepared.batches[:batches] for i in batch]
    return PreparedPairs.build(tokenizer, arch, queries, [candidates[i] for i in index],
                               max_length=settings.max_length,
                               batch_tokens=settings.batch_tokens)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def compare(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dir: str | Path,
    pruned_dir: str | Path,
    split_dir: str | Path,
    out_scores: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a (test) split with the full and the pruned adapter; write evaluate-shaped
    outputs with ablations ``full`` and ``pruned``. Returns the summary.

    ``params`` is the evaluate slice without ``ablations`` (``metrics``, ``significance``,
    ``scoring``, identifying fields ``model, adapter, step, sweep, split``) plus an optional
    ``timing`` block (:class:`TimingSettings`). The summary's ``ablations.pruned.zeroed``
    lists the LoRA modules the pruned adapter lacks; ``boundary`` holds ``b``, ``layers``
    (the model's depth), the kept/dropped layers, ``params_removed_fraction`` (of the LoRA
    parameters), ``speedup`` (full seconds / pruned seconds) and, with
    ``timing.check_ablation``, the largest score difference to the in-place ablation.

    Raises:
        AdapterMismatch: either adapter belongs to another base, or the pruned adapter was not
            pruned from ``adapter_dir``.
        PrunedMismatch: the pruned adapter's scores differ from the in-place ablation.
    """
    import gc

    from lorascope import switching
    from lorascope.contracts import SCORES, ParquetSink
    from lorascope.evaluate import (
        EvalSettings,
        _score_rows,
        _summary,
        load_adapted,
        read_split,
        write_metrics,
    )
    from lorascope.models.reranker import default_device
    from lorascope.scoring import PreparedPairs

    base_dir, adapter_dir, pruned_dir = Path(base_dir), Path(adapter_dir), Path(pruned_dir)
    started = time.perf_counter()
    timing_settings = TimingSettings.from_params(params)
    manifest = _pruned_manifest(pruned_dir, adapter_dir, base_dir)
    source_manifest = (adapters.verify(adapter_dir, base_dir)
                       if (adapter_dir / adapters.MANIFEST).is_file() else None)
    info = manifest["pruned"]
    dropped = frozenset((int(layer), str(role)) for layer, role in info["modules_dropped"])
    eval_params = {k: v for k, v in params.items() if k != "timing"}
    eval_params["ablations"] = [{"name": FULL, "zeroed": []},
                                Ablation(PRUNED, dropped).to_params()]
    settings = EvalSettings.from_params(eval_params)
    device = default_device()

    queries, candidates, qrels = read_split(split_dir)
    record = provenance.record(COMPARE_STAGE, params, base_dir=str(base_dir),
                               adapter_dir=str(adapter_dir), pruned_dir=str(pruned_dir),
                               split_dir=str(split_dir), device=device,
                               adapter_manifest=source_manifest, pruned_manifest=manifest)
    runs: dict[str, dict[tuple[str, str], float]] = {}
    timing: dict[str, dict[str, Any]] = {}
    prepared: Any = None
    warmup: Any = None
    check: dict[str, Any] = {}
    for name, directory in ((FULL, adapter_dir), (PRUNED, pruned_dir)):
        model, tokenizer, arch = load_adapted(base_dir, directory, dtype=settings.dtype,
                                              device=device)
        if prepared is None:
            prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                           max_length=settings.max_length,
                                           batch_tokens=settings.batch_tokens,
                                           progress=progress)
            warmup = _warmup_pairs(prepared, tokenizer, arch, queries, candidates, settings,
                                   timing_settings.warmup_batches)
        runs[name], timing[name] = _timed(prepared, warmup, model, device, name,
                                          timing_settings, progress)
        if name == FULL and timing_settings.check_ablation and dropped:
            with switching.zeroed(model, arch, dropped):
                check["scores"] = prepared.score(model, device=device, progress=progress,
                                                 desc=boundary_name(info["b"]))
        del model
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    if "scores" in check:
        check = _check_pruned(check["scores"], runs[PRUNED], timing_settings.tolerance,
                              pruned_dir)

    with ParquetSink(out_scores, SCORES, record) as sink:
        for name, scores in runs.items():
            sink.write_rows(_score_rows(name, scores))
    per_query = write_metrics(out_metrics, runs, qrels, settings.measures, record)

    summary = _summary(eval_params, settings, per_query, timing, prepared, record)
    fraction = float(info["params"]["fraction_removed"])
    for name in (FULL, PRUNED):
        summary["ablations"][name]["seconds_all"] = timing[name]["seconds_all"]
        summary["ablations"][name]["lora_params"] = (
            info["params"]["lora_total"] if name == FULL else info["params"]["lora_kept"])
    speedup = timing[FULL]["seconds"] / max(timing[PRUNED]["seconds"], 1e-12)
    summary["boundary"] = {
        "b": info["b"],
        "layers": info["num_layers"],
        "layers_kept": info["layers_kept"],
        "layers_dropped": info["layers_dropped"],
        "modules_dropped": len(dropped),
        "params_removed_fraction": fraction,
        "speedup": round(speedup, 4),
        "selection": manifest.get("selection"),
        "ablation_check": check or None,
    }
    summary["timing"] = asdict(timing_settings)
    summary["seconds_total"] = round(time.perf_counter() - started, 2)
    fileio.write_json(out_summary, summary)
    log.info("pruned at b = %d: %.1f%% of LoRA parameters removed, speed x%.3f, %s %+.4f",
             info["b"], 100 * fraction, speedup, settings.measures[0],
             summary["ablations"][PRUNED]["delta"][settings.measures[0]])
    return summary


def _check_pruned(ablated: Mapping[tuple[str, str], float],
                  pruned: Mapping[tuple[str, str], float], tolerance: float,
                  pruned_dir: Path) -> dict[str, Any]:
    worst_key = max(ablated, key=lambda k: abs(ablated[k] - pruned[k]))
    worst = abs(ablated[worst_key] - pruned[worst_key])
    if worst > tolerance * (1.0 + abs(ablated[worst_key])):
        raise PrunedMismatch(
            f"the pruned adapter {pruned_dir} does not reproduce the in-place ablation of the "
            f"full adapter: {worst_key} {pruned[worst_key]!r} vs {ablated[worst_key]!r}"
        )
    return {"max_abs_diff": worst, "tolerance": tolerance, "bitwise": worst == 0.0}
