"""The ``evaluate_checkpoints`` stage: every checkpoint of one training run, scored on one split.

The checkpoint curves (Table 1, the convergence rule of Table 2) need the full adapter of every
checkpoint on a split. One job per run and split does them all: the base model and the last
checkpoint are loaded once, the split is tokenised and batched once, and every other
checkpoint is swapped into the same LoRA layers and head in place
(:func:`lorascope.models.adapted.swap_checkpoint`, bitwise equal to a fresh load), so a run of
N checkpoints pays one process start and one model load instead of N.

Outputs, in ``out_dir/step-<N>/`` for each step: ``scores.parquet``, ``metrics.parquet`` and
``summary.json``, exactly what an ``evaluate`` job of the built-in sweep ``checkpoints`` (the
full adapter alone) writes for that step, and ``full.run``, the TREC run of those scores
(tagged ``<model>.<adapter>.step-<N>.checkpoints.full``, the file an ``evaluate`` job writes
as ``runs/full.run``); plus ``out_dir/summary.json`` with the run's timing.

``params`` (the rule's config slice)::

    model, adapter, split: identifying fields, copied into the outputs
    steps:    [10, 25, 40]      # the checkpoints scored on this split
    metrics:  ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
    scoring:  {batch_tokens: 16384, max_length: 196, precision: auto}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.core import fileio, provenance, trec
from lorascope.core.adapters import verified_manifest
from lorascope.core.contracts import SCORES, ParquetSink
from lorascope.core.names import CHECKPOINTS, FULL, checkpoint_name
from lorascope.core.precision import describe
from lorascope.core.results import EvalSettings, score_rows, sweep_summary, write_metrics
from lorascope.data.splits import read_split

log = logging.getLogger(__name__)

STAGE = "evaluate_checkpoints"
OUTPUTS = ("scores.parquet", "metrics.parquet", "summary.json", f"{FULL}{trec.RUN_SUFFIX}")


def step_dir(out_dir: str | Path, step: int) -> Path:
    """Where the outputs of checkpoint ``step`` go."""
    return Path(out_dir) / checkpoint_name(step)


def evaluate_checkpoints(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dirs_by_step: Mapping[int, str | Path],
    split_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the full adapter of every checkpoint in ``params["steps"]`` on a split.

    Returns:
        The run's summary (``out_dir/summary.json``): per step its metrics and timing.

    Raises:
        ValueError: a step of ``params["steps"]`` without a checkpoint directory, or
            checkpoints whose tensors differ in shape (another run).
    """
    from lorascope.core.scoring import PreparedPairs
    from lorascope.models.adapted import load_adapted, swap_checkpoint
    from lorascope.models.reranker import default_device

    steps = [int(s) for s in params.get("steps") or []]
    if not steps:
        raise ValueError("evaluate_checkpoints params: 'steps' must list at least one step")
    missing = [s for s in steps if s not in adapter_dirs_by_step]
    if missing:
        raise ValueError(f"evaluate_checkpoints: no checkpoint directory for steps {missing} "
                         f"(given: {sorted(adapter_dirs_by_step)})")
    eval_params = {**{k: v for k, v in params.items() if k != "steps"}, "sweep": CHECKPOINTS,
                   "ablations": [{"name": FULL, "zeroed": []}]}
    settings = EvalSettings.from_params(eval_params)
    tags = {step: trec.sweep_tagger({**eval_params, "step": step})(FULL) for step in steps}
    device = default_device()
    precision = settings.scoring.resolve(device)
    order = [steps[-1], *steps[:-1]]  # the last one is loaded, the others swapped in
    started = time.perf_counter()
    model, tokenizer, arch = load_adapted(base_dir, adapter_dirs_by_step[order[0]],
                                          dtype=precision.dtype, device=device,
                                          attention=precision.attention)
    load_seconds = time.perf_counter() - started
    queries, candidates, qrels = read_split(split_dir)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    log.info("loaded %s + %s on %s in %s in %.1fs; %d pairs, %d checkpoints", base_dir,
             adapter_dirs_by_step[order[0]], device, precision.resolved, load_seconds,
             len(prepared), len(order))
    per_step: dict[int, dict[str, Any]] = {}
    for step in order:
        adapter_dir = Path(adapter_dirs_by_step[step])
        t0 = time.perf_counter()
        if step != order[0]:
            swap_checkpoint(model, adapter_dir, device)
        swap_seconds = time.perf_counter() - t0
        manifest = verified_manifest(adapter_dir, base_dir)
        record = provenance.record(STAGE, params, base_dir=str(base_dir),
                                   adapter_dir=str(adapter_dir), split_dir=str(split_dir),
                                   device=device, step=step, adapter_manifest=manifest,
                                   precision=describe(precision))
        t1 = time.perf_counter()
        scores = prepared.score(model, device=device, progress=progress, desc=f"step {step}")
        seconds = time.perf_counter() - t1
        run_stats = prepared.last_stats
        assert run_stats is not None
        timing = {FULL: {**run_stats.to_dict(), "seconds": round(seconds, 4),
                         "plan_version": prepared.plan_version, "energy_kept": None}}
        out = step_dir(out_dir, step)
        out.mkdir(parents=True, exist_ok=True)
        with ParquetSink(out / OUTPUTS[0], SCORES, record) as sink:
            sink.write_rows(score_rows(FULL, scores))
        trec.write_run(out / OUTPUTS[3], scores, tags[step])
        per_query = write_metrics(out / OUTPUTS[1], {FULL: scores}, qrels, settings.measures,
                                  record)
        summary = sweep_summary({**eval_params, "step": step}, settings, per_query, timing,
                                prepared, record, precision)
        summary["seconds_swap"] = round(swap_seconds, 4)
        fileio.write_json(out / OUTPUTS[2], summary)
        per_step[step] = {"metrics": summary["ablations"][FULL]["metrics"],
                          "seconds": round(seconds, 4), "swap_seconds": round(swap_seconds, 4)}
        log.info("step %-6d %d pairs in %.2fs (%.1f pairs/s): %s", step, len(scores), seconds,
                 len(scores) / max(seconds, 1e-9),
                 {m: round(v, 4) for m, v in per_step[step]["metrics"].items()})
    run = {k: params[k] for k in ("model", "adapter", "split") if k in params}
    total = {**run, "steps": steps, "per_step": {str(s): per_step[s] for s in steps},
             "loading": {"strategy": "base + last checkpoint loaded once; the others swapped "
                                     "in with set_peft_model_state_dict",
                         "seconds": round(load_seconds, 3)},
             "precision": describe(precision),
             "seconds_total": round(time.perf_counter() - started, 2)}
    fileio.write_json(Path(out_dir) / "summary.json", total)
    return total
