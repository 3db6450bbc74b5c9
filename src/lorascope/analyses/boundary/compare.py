"""The ``compare_boundary`` stage: pruned against full on a test split.

:func:`compare_boundary` scores a test split with the full and the pruned adapter (each loaded as a
plain, unmerged peft adapter, one after the other, on the same tokenised batches), times
each pass after a warm-up, and writes scores / metrics / summary in the shape of the
evaluate stage, with ablations ``full`` and ``pruned``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.analyses.boundary import PRUNED
from lorascope.analyses.boundary.selection import BoundaryError
from lorascope.core import adapters, fileio, provenance
from lorascope.core.ablation import Ablation
from lorascope.core.names import FULL, boundary_name
from lorascope.core.precision import describe
from lorascope.core.roles import ArchitectureRoles

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

STAGE = "compare_boundary"


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
    from lorascope.core.scoring import PreparedPairs

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


def compare_boundary(
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
    ``timing.check_ablation``, the largest score difference to the in-place ablation. The
    TREC runs of both (``full.run``, ``pruned.run``) go into ``runs/`` beside ``out_scores``.

    Raises:
        AdapterMismatch: either adapter belongs to another base, or the pruned adapter was not
            pruned from ``adapter_dir``.
        PrunedMismatch: the pruned adapter's scores differ from the in-place ablation.
    """
    import gc

    from lorascope.core import switching
    from lorascope.core.contracts import SCORES, ParquetSink
    from lorascope.core.results import EvalSettings, score_rows, sweep_summary, write_metrics
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.trec import RUNS_DIR, sweep_tagger, write_runs
    from lorascope.data.splits import read_split
    from lorascope.models.adapted import load_adapted
    from lorascope.models.reranker import default_device

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
    precision = settings.scoring.resolve(device)

    queries, candidates, qrels = read_split(split_dir)
    record = provenance.record(STAGE, params, base_dir=str(base_dir),
                               adapter_dir=str(adapter_dir), pruned_dir=str(pruned_dir),
                               split_dir=str(split_dir), device=device,
                               adapter_manifest=source_manifest, pruned_manifest=manifest,
                               precision=describe(precision))
    runs: dict[str, dict[tuple[str, str], float]] = {}
    timing: dict[str, dict[str, Any]] = {}
    prepared: Any = None
    warmup: Any = None
    check: dict[str, Any] = {}
    for name, directory in ((FULL, adapter_dir), (PRUNED, pruned_dir)):
        model, tokenizer, arch = load_adapted(base_dir, directory, dtype=precision.dtype,
                                              device=device, attention=precision.attention)
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
            sink.write_rows(score_rows(name, scores))
    # the TREC runs of both adapters beside the scores, tagged like a sweep's ablations
    write_runs(Path(out_scores).with_name(RUNS_DIR), runs, sweep_tagger(eval_params))
    per_query = write_metrics(out_metrics, runs, qrels, settings.measures, record)

    summary = sweep_summary(eval_params, settings, per_query, timing, prepared, record,
                            precision)
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
