"""The ``lens`` stage: the relevance lens of the base model and every checkpoint of one run on
one split (the readout maths is :mod:`lorascope.core.readout`, shared with the probes).

Checkpoints: the output has one row set per checkpoint step, plus step 0, the *base model*:
every LoRA update switched off in place (:func:`lorascope.core.switching.zeroed`), read with the
head of the run's **last** checkpoint. The base model has no trained head (a freshly
initialised one would measure noise); the last head is the readout training converged to, and
"no LoRA, trained head" is also what the ablation tables call "No LoRA updates". Step 0 thus
answers "how much of the final readout can the untouched base already serve, and where". For
initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ) switching LoRA off
leaves the residual model, not the original base; the summary says so.

Loading (:mod:`lorascope.models.run`, shared with the other base-vs-checkpoints analyses): the
base model and the last checkpoint are loaded once
(:func:`lorascope.models.adapted.load_adapted`); every other checkpoint of the run (same
``adapter_config.json``) is swapped into the same LoRA layers and head copy with peft's
``set_peft_model_state_dict``. Measured on tiny LLaMA / GPT-NeoX / BERT adapters (LoRA and
DoRA) and the real MiniLM r32 checkpoints: scores bitwise equal to a fresh load, and the
fastest of fresh loads, ``load_adapter`` + ``set_adapter``, and the state-dict swap.

Outputs: a :data:`~lorascope.core.contracts.LENS` Parquet (mean per step, layer and measure), an
optional :data:`~lorascope.core.contracts.LENS_QUERIES` Parquet (per query), and a summary JSON:
per step the best layer, the first layer within ``epsilon`` of the final layer's value and
the timings; plus the run's fields and provenance.

``params`` (the rule's config slice, plain builtins; the ``evaluate`` slice's field names)::

    model, adapter, split: identifying fields, copied into the outputs
    metrics:  ["nDCG@10", "RR(rel=2)"]
    scoring:  {batch_tokens: 16384, max_length: 256, dtype: float32}
    epsilon:  0.01
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.analyses.lens import LENS, LENS_QUERIES
from lorascope.analyses.lens.readable import DEFAULT_EPSILON, readable_from
from lorascope.core import fileio, metrics, provenance
from lorascope.core.contracts import write_table
from lorascope.core.precision import describe
from lorascope.core.readout import Readout, check_final_layer, readout_for, score_layers
from lorascope.core.results import ScoringSettings, UsesScoring, measures_param
from lorascope.models.run import BASE_STEP, load_run, read_run, visit

log = logging.getLogger(__name__)

STAGE = "lens"
RUN_FIELDS = ("model", "adapter", "split")
PARAM_KEYS = frozenset({*RUN_FIELDS, "metrics", "scoring", "epsilon"})


@dataclass(frozen=True)
class LensSettings(UsesScoring):
    """The lens stage's parsed params.

    Attributes:
        measures: ir-measures names.
        epsilon: a layer is "readable" when its value is >= the final layer's - epsilon.
        scoring: how pairs are batched and the model is loaded (the ``scoring`` params).
    """

    measures: tuple[str, ...]
    epsilon: float = DEFAULT_EPSILON
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LensSettings:
        """Parse and check the params, with an error naming the offending key."""
        unknown = sorted(set(params) - PARAM_KEYS)
        if unknown:
            raise ValueError(f"lens params: unknown keys {unknown}; known: {sorted(PARAM_KEYS)}")
        measures = measures_param(params, "lens")
        settings = cls(
            measures=tuple(measures),
            epsilon=float(params.get("epsilon", cls.epsilon)),
            scoring=ScoringSettings.from_params(params.get("scoring"), "lens"),
        )
        if settings.epsilon < 0:
            raise ValueError(f"lens params: 'epsilon' must be >= 0, got {settings.epsilon}")
        return settings


def lens(
    params: Mapping[str, Any],
    base_dir: str | Path,
    adapter_dirs_by_step: Mapping[int, str | Path],
    split_dir: str | Path,
    out_parquet: str | Path,
    out_summary: str | Path,
    *,
    out_per_query: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the relevance lens over the base model and every checkpoint of one run on a split.

    Reads the prepared base model, the run's adapter checkpoints (extracted ones are verified
    against the base) and the split; writes the LENS Parquet (``out_parquet``), optionally the
    LENS_QUERIES Parquet (``out_per_query``), and the summary JSON (``out_summary``), each
    atomically, provenance inside.

    Returns:
        The summary written to ``out_summary``.

    Raises:
        ReadoutError: the deepest lens layer does not reproduce the model's own score.
        ValueError: bad params (naming the key), checkpoints of different runs.
    """
    from lorascope.core import switching
    from lorascope.core.scoring import PreparedPairs
    from lorascope.data.splits import read_split
    from lorascope.models.reranker import default_device

    settings = LensSettings.from_params(params)
    run = read_run(adapter_dirs_by_step, base_dir, STAGE)
    checkpoints, last_step, last_dir = run.checkpoints, run.last_step, run.last_dir
    device = default_device()
    precision = settings.scoring.resolve(device)
    started = time.perf_counter()
    model, tokenizer, arch, load_seconds = load_run(run, base_dir, dtype=precision.dtype,
                                                    device=device,
                                                    attention=precision.attention)
    readout_for(arch)
    modules = switching.lora_modules(model, arch)
    log.info("loaded %s + %s (step %d) on %s in %.1fs: %d LoRA modules, %d checkpoints",
             base_dir, last_dir, last_step, device, load_seconds, len(modules), len(checkpoints))

    queries, candidates, qrels = read_split(split_dir)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    record = provenance.record(
        STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir), device=device,
        adapter_dirs={str(s): str(d) for s, d in checkpoints},
        adapter_manifests={str(s): m for s, m in run.manifests.items()},
        base_head_step=last_step, precision=describe(precision),
    )

    per_step: dict[int, dict[str, Any]] = {}
    per_query: dict[int, dict[int, dict[str, dict[str, float]]]] = {}
    budget = settings.batch_tokens
    with closing(visit(model, arch, run, list(run.dirs), device, stage=STAGE)) as steps_:
        for step, swap_seconds in steps_:
            t1 = time.perf_counter()
            desc = f"lens step {step}" + (" (base)" if step == BASE_STEP else "")
            scores = score_layers(prepared, model, arch, device=device, batch_tokens=budget,
                                  progress=progress, desc=desc)
            budget = scores.stats["batch_tokens"]
            seconds = time.perf_counter() - t1
            diff = check_final_layer(scores, precision.dtype,
                                     f"step {step} of {last_dir.parent}")
            t2 = time.perf_counter()
            per_query[step] = {layer: metrics.per_query(qrels, scores.run(layer),
                                                        list(settings.measures))
                               for layer in range(1, scores.depth + 1)}
            metric_seconds = time.perf_counter() - t2
            per_step[step] = entry = _step_entry(
                step, per_query[step], settings, seconds=seconds, swap_seconds=swap_seconds,
                metric_seconds=metric_seconds, final_diff=diff, stats=scores.stats)
            primary = settings.measures[0]
            log.info("step %-6d %d pairs x %d layers in %.2fs (%.1f pairs/s); %s final %.4f, "
                     "best layer %d (%.4f), readable from layer %d", step, len(prepared),
                     scores.depth, seconds, len(prepared) / max(seconds, 1e-9), primary,
                     entry["final_value"][primary], entry["best_layer"][primary],
                     entry["best_value"][primary], entry["readable_from"][primary])

    fields = {k: str(params.get(k, "")) for k in RUN_FIELDS}
    steps = sorted(per_query)
    write_table(out_parquet, _aggregate_rows(fields, steps, per_query), LENS, record)
    if out_per_query is not None:
        write_table(out_per_query, _query_rows(fields, steps, per_query), LENS_QUERIES, record)
    depth = max(per_query[last_step])
    summary = {
        **{k: params[k] for k in RUN_FIELDS if k in params},
        "measures": list(settings.measures),
        "epsilon": settings.epsilon,
        "depth": depth,
        "layers": list(range(1, depth + 1)),
        "layer_numbering": "l = output of block l (block index l - 1 in ablations); "
                           "layer depth = the model's own score",
        "readout": {"architecture": arch.model_type, **_readout_dict(readout_for(arch))},
        "steps": steps,
        "base": {"step": BASE_STEP, "lora": "every LoRA update switched off",
                 "head_from_step": last_step, "original_base": run.original_base},
        "per_step": [per_step[s] for s in steps],
        "scoring": {"pairs": len(prepared), "batch_tokens": budget,
                    "max_length": settings.max_length, "precision": precision.resolved,
                    "real_tokens": prepared.real_tokens, "padded_tokens": prepared.padded_tokens,
                    "padding_ratio": round(prepared.padding_ratio, 4), "device": device},
        "loading": {"strategy": "base + last checkpoint loaded once; other checkpoints "
                                "swapped in with set_peft_model_state_dict",
                    "seconds": round(load_seconds, 3)},
        "seconds_total": round(time.perf_counter() - started, 2),
        "provenance": dict(record),
    }
    fileio.write_json(out_summary, summary)
    return summary


def _readout_dict(readout: Readout) -> dict[str, Any]:
    return {"norm": readout.norm, "heads": list(readout.heads), "token": readout.token}


def _step_entry(
    step: int,
    layers: Mapping[int, Mapping[str, Mapping[str, float]]],
    settings: LensSettings,
    **timing: Any,
) -> dict[str, Any]:
    """One step of the summary: per measure the means in layer order (the summary's
    ``layers``), the best layer (ties: the shallowest), and the first layer whose value is >=
    the final layer's - epsilon ("readable from")."""
    order = sorted(layers)
    means = {layer: metrics.aggregate(layers[layer]) for layer in order}
    by_layer = {m: [means[layer][m] for layer in order] for m in settings.measures}
    best_layer, best_value, final_value, readable = {}, {}, {}, {}
    for m in settings.measures:
        curve = {layer: means[layer][m] for layer in order}
        final = curve[order[-1]]
        best = max(order, key=lambda layer: (curve[layer], -layer))
        best_layer[m], best_value[m], final_value[m] = best, curve[best], final
        readable[m] = readable_from(curve, settings.epsilon)
    stats = timing.pop("stats")
    first = layers[order[0]]
    return {
        "step": step,
        "by_layer": by_layer,
        "final_value": final_value,
        "best_layer": best_layer,
        "best_value": best_value,
        "readable_from": readable,
        "queries": len(next(iter(first.values()))) if first else 0,
        "seconds": round(timing["seconds"], 4),
        "swap_seconds": round(timing["swap_seconds"], 4),
        "metric_seconds": round(timing["metric_seconds"], 4),
        "final_layer_max_rel_diff": timing["final_diff"],
        "padding_ratio": stats.get("padding_ratio"),
    }


PerQuery = Mapping[int, Mapping[int, Mapping[str, Mapping[str, float]]]]


def _aggregate_rows(run: Mapping[str, str], steps: Sequence[int], per_query: PerQuery
                    ) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in LENS.columns}
    for step in steps:
        for layer, values in sorted(per_query[step].items()):
            for measure, mean in metrics.aggregate(values).items():
                for name in RUN_FIELDS:
                    columns[name].append(run[name])
                columns["step"].append(step)
                columns["layer"].append(layer)
                columns["measure"].append(measure)
                columns["value"].append(mean)
                columns["queries"].append(len(values[measure]))
    return columns


def _query_rows(run: Mapping[str, str], steps: Sequence[int], per_query: PerQuery
                ) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in LENS_QUERIES.columns}
    for step in steps:
        for layer, values in sorted(per_query[step].items()):
            for measure, by_query in values.items():
                for qid, value in sorted(by_query.items()):
                    for name in RUN_FIELDS:
                        columns[name].append(run[name])
                    columns["step"].append(step)
                    columns["layer"].append(layer)
                    columns["measure"].append(measure)
                    columns["qid"].append(qid)
                    columns["value"].append(value)
    return columns
