"""The relevance lens: how well each layer's hidden state ranks when the trained head reads it.

The reranker's score is its trained head applied to one token's final hidden state. The lens
applies that same head to the hidden state after every block - where in depth does relevance
become readable, and how does training move it? One forward pass per batch with
``output_hidden_states`` gives every layer; per layer the scores rank the split's candidates
and :mod:`lorascope.metrics` measures the ranking per query.

Layer numbering: ``layer`` counts the transformer blocks applied: l is the output of block l,
L (the depth) the full model. The rest of the package (LoRA modules, ablations, the boundary
sweep) numbers *blocks* from 0: block i's output is lens layer i + 1. :func:`layer_scores`
also reads layer 0, the embeddings, but the stage leaves it out: there the read token has
seen no other token - BERT's ``[CLS]`` embedding is the same for every pair, a decoder scores
its last token's own embedding, the same for every pair ending in the same token - so its
scores tie and its "ranking" is largely ir-measures' tie-breaking by docid (measured on
MiniLM, DL19: a constant 0.443 nDCG@10 at layer 0 for every checkpoint, above the trained
model's layers 1-5).

Readout, per architecture - what the sequence classifier does after its last block:

* LLaMA / Mistral: ``model.norm`` (RMSNorm), then ``score``, on the last non-pad token: the
  rightmost position whose input id is not the pad token, Hugging Face's own rule (scoring
  pads on the right, :mod:`lorascope.models.reranker`).
* GPT-NeoX: ``gpt_neox.final_layer_norm``, then ``score``, same token.
* BERT: ``bert.pooler`` (dense + tanh on ``[CLS]``), then ``classifier``. BERT blocks end in
  a LayerNorm, so nothing is added.

Hugging Face returns L + 1 hidden states whose last one is already the final-normed output
(``last_hidden_state``), so the decoders' norm is applied to entries 0..L-1 only: normalising
the last one again would change it (tests/test_lens.py pins that convention). Every pass
checks that lens layer L reproduces the model's own score, so a change of convention in a
future transformers release fails loudly instead of shifting the curves.

Cost: a lens pass takes about the time of a plain scoring pass (measured, interleaved, best of
3: 0.86-0.96x on CPU for a tiny LLaMA and MiniLM; 1.02-1.06x on an H100 for a random 24-block
width-1024 LLaMA) but holds every layer's hidden states of a batch: +31-33 % peak GPU memory
there. An out-of-memory error halves the token budget and redoes the pass.

Checkpoints: the output has one row set per checkpoint step, plus step 0, the *base model*:
every LoRA update switched off in place (:func:`lorascope.switching.zeroed`), read with the
head of the run's **last** checkpoint. The base model has no trained head (a freshly
initialised one would measure noise); the last head is the readout training converged to, and
"no LoRA, trained head" is also what the ablation tables call "No LoRA updates". Step 0 thus
answers "how much of the final readout can the untouched base already serve, and where". For
initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ) switching LoRA off
leaves the residual model, not the original base; the summary says so.

Loading: the base model and the last checkpoint are loaded once
(:func:`lorascope.evaluate.load_adapted`); every other checkpoint of the run (same
``adapter_config.json``) is swapped into the same LoRA layers and head copy with peft's
``set_peft_model_state_dict``. Measured on tiny LLaMA / GPT-NeoX / BERT adapters (LoRA and
DoRA) and the real MiniLM r32 checkpoints: scores bitwise equal to a fresh load, and the
fastest of fresh loads, ``load_adapter`` + ``set_adapter``, and the state-dict swap.

Outputs: a :data:`~lorascope.contracts.LENS` Parquet (mean per step, layer and measure), an
optional :data:`~lorascope.contracts.LENS_QUERIES` Parquet (per query), and a summary JSON:
per step the best layer, the first layer within ``epsilon`` of the final layer's value and
the timings; plus the run's fields and provenance.

``params`` (the rule's config slice, plain builtins; the ``evaluate`` slice's field names)::

    model, adapter, split: identifying fields, copied into the outputs
    metrics:  ["nDCG@10", "RR(rel=2)"]
    scoring:  {batch_tokens: 16384, max_length: 256, dtype: float32}
    epsilon:  0.01
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorascope import fileio, metrics, provenance
from lorascope.contracts import (
    LENS,
    LENS_QUERIES,
    write_table,
)
from lorascope.roles import ArchitectureRoles, UnsupportedArchitecture

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lorascope.scoring import PreparedPairs

log = logging.getLogger(__name__)

STAGE = "lens"
RUN_FIELDS = ("model", "adapter", "split")
BASE_STEP = 0
PARAM_KEYS = frozenset({*RUN_FIELDS, "metrics", "scoring", "epsilon"})
SCORING_KEYS = frozenset({"batch_tokens", "max_length", "dtype"})
#: peft initialisations that rewrite the base weights: LoRA off is then not the original base.
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
#: How far lens layer L may be from the model's own score (relative to max(1, |score|)).
FINAL_LAYER_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}

Key = tuple[str, str]


class LensError(RuntimeError):
    """The lens's deepest layer does not reproduce the model's own score."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LensSettings:
    """The lens stage's parsed params.

    Attributes:
        measures: ir-measures names.
        epsilon: a layer is "readable" when its value is >= the final layer's - epsilon.
        batch_tokens: token budget per scoring batch (padded tokens).
        max_length: token cut-off of a pair (the training one).
        dtype: weights dtype (``float32``, ``bfloat16``, ``float16``).
    """

    measures: tuple[str, ...]
    epsilon: float = 0.01
    batch_tokens: int = 16384
    max_length: int = 256
    dtype: str = "float32"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LensSettings:
        """Parse and check the params, with an error naming the offending key."""
        from lorascope.models.reranker import DTYPES

        unknown = sorted(set(params) - PARAM_KEYS)
        scoring = dict(params.get("scoring") or {})
        unknown += sorted(f"scoring.{k}" for k in set(scoring) - SCORING_KEYS)
        if unknown:
            raise ValueError(f"lens params: unknown keys {unknown}; known: "
                             f"{sorted(PARAM_KEYS)} and scoring.{sorted(SCORING_KEYS)}")
        measures = params.get("metrics")
        if (not isinstance(measures, list) or not measures
                or not all(isinstance(m, str) for m in measures)):
            raise ValueError("lens params: 'metrics' must be a non-empty list of measure names")
        if len(set(measures)) != len(measures):
            raise ValueError(f"lens params: 'metrics' lists a measure twice: {measures}")
        metrics.parse_measures(measures)  # an unknown measure fails here, before any loading
        settings = cls(
            measures=tuple(measures),
            epsilon=float(params.get("epsilon", cls.epsilon)),
            batch_tokens=int(scoring.get("batch_tokens", cls.batch_tokens)),
            max_length=int(scoring.get("max_length", cls.max_length)),
            dtype=scoring.get("dtype", cls.dtype),
        )
        if settings.epsilon < 0:
            raise ValueError(f"lens params: 'epsilon' must be >= 0, got {settings.epsilon}")
        if settings.batch_tokens < 1 or settings.max_length < 1:
            raise ValueError("lens params: scoring.batch_tokens and scoring.max_length must be "
                             "positive")
        if settings.dtype not in DTYPES:
            raise ValueError(f"lens params: scoring.dtype must be one of {', '.join(DTYPES)}, "
                             f"got {settings.dtype!r}")
        return settings


# --------------------------------------------------------------------------- readout


@dataclass(frozen=True)
class Readout:
    """How an architecture's sequence classifier turns its last hidden states into a score.

    Attributes:
        norm: module path (inside the task model) of the final norm the decoder applies after
            its last block; ``None`` when the blocks' output is read as it is (BERT).
        heads: module paths applied in order to the read token's state, each given a
            length-1 sequence ``(N, 1, hidden)`` (BERT's pooler takes position 0 of it).
        token: ``last`` = the last non-pad token (decoders), ``first`` = ``[CLS]``.
    """

    norm: str | None
    heads: tuple[str, ...]
    token: Literal["last", "first"]


_DECODER = Readout(norm="model.norm", heads=("score",), token="last")
READOUTS: dict[str, Readout] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "gpt_neox": Readout(norm="gpt_neox.final_layer_norm", heads=("score",), token="last"),
    "bert": Readout(norm=None, heads=("bert.pooler", "classifier"), token="first"),
}


def readout_for(arch: ArchitectureRoles) -> Readout:
    """The readout of ``arch``; :class:`UnsupportedArchitecture` for one the lens lacks."""
    try:
        return READOUTS[arch.model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"the relevance lens has no readout for architecture {arch.model_type!r}; "
            f"it supports {', '.join(sorted(READOUTS))}"
        ) from None


def task_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face sequence classifier inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def last_token_positions(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Per row, the rightmost position whose id is not the pad token (Hugging Face's rule for
    decoder classifiers; the last position when there is no pad token)."""
    import torch

    batch, width = input_ids.shape
    if pad_token_id is None:
        return torch.full((batch,), width - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).to(torch.long)
    positions = torch.arange(width, device=input_ids.device, dtype=torch.long)
    return (positions * non_pad).argmax(-1)


def layer_scores(
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    hidden_states: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
) -> torch.Tensor:
    """The score head applied to every hidden state: ``(batch, len(hidden_states))``.

    Args:
        model: the reranker (PeftModel or plain task model) whose head and norm are used -
            with an adapter loaded, the trained head (``modules_to_save``).
        arch: its roles.
        hidden_states: Hugging Face's ``output_hidden_states`` tuple: embeddings, then one per
            block, the last already final-normed.
        input_ids: the batch's ids (right- or left-padded), to find each row's read token.
    """
    import torch

    readout = readout_for(arch)
    task = task_model(model)
    first = hidden_states[0]
    batch, hidden = first.shape[0], first.shape[-1]
    rows = torch.arange(batch, device=first.device)
    if readout.token == "last":
        pad = getattr(task.config, "pad_token_id", None)
        positions = last_token_positions(input_ids.to(first.device), pad)
    else:
        positions = torch.zeros(batch, dtype=torch.long, device=first.device)
    states = torch.stack([h[rows, positions] for h in hidden_states])  # (layers, batch, hidden)
    if readout.norm is not None:
        # entries 0..L-1 are raw residual streams; entry L is already final-normed
        norm = task.get_submodule(readout.norm)
        states = torch.cat([norm(states[:-1]), states[-1:]])
    out = states.reshape(-1, 1, hidden)
    for path in readout.heads:
        out = task.get_submodule(path)(out)
    return out.reshape(len(hidden_states), batch, -1)[..., 0].transpose(0, 1)


@contextmanager
def _recording(model: torch.nn.Module, arch: ArchitectureRoles) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model`` also returns its hidden states and appends
    its per-layer scores ``(batch, layers + 1)`` to the yielded list.

    Hooks on the task model: a pre-hook that asks for ``output_hidden_states`` (peft passes
    ``output_hidden_states=None`` explicitly, so setting it in the config would not reach the
    backbone) and a hook that reads them. Only the small score matrix is kept.
    """
    task = task_model(model)
    records: list[torch.Tensor] = []

    def ask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "output_hidden_states": True}

    def read(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = getattr(output, "hidden_states", None)
        if not hidden:
            raise LensError(f"{type(module).__name__} returned no hidden states")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise LensError("the lens needs input_ids (not inputs_embeds) to find the read token")
        records.append(layer_scores(model, arch, hidden, input_ids))

    handles = [task.register_forward_pre_hook(ask, with_kwargs=True),
               task.register_forward_hook(read, with_kwargs=True)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- scoring


@dataclass
class LayerScores:
    """Every pair's score at every lens layer, and the model's own score.

    Attributes:
        keys: ``(qid, docid)`` per row, the prepared pairs' order.
        values: ``(pairs, layers + 1)`` float64; column l = lens layer l.
        model_scores: ``(pairs,)`` the model's own scores (the ``scoring`` module's).
        stats: the scoring pass's :class:`~lorascope.scoring.ScoringStats` as a dict.
    """

    keys: tuple[Key, ...]
    values: np.ndarray
    model_scores: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """L: the deepest lens layer (the number of blocks)."""
        return self.values.shape[1] - 1

    @property
    def final_diff(self) -> float:
        """Max |lens layer L - the model's own score|, relative to max(1, |score|)."""
        import numpy as np

        if not len(self.keys):
            return 0.0
        scale = np.maximum(1.0, np.abs(self.model_scores))
        return float(np.max(np.abs(self.values[:, -1] - self.model_scores) / scale))

    def run(self, layer: int) -> list[tuple[str, str, float]]:
        """Lens layer ``layer``'s scores as an ir-measures run ``(qid, docid, score)``."""
        column = self.values[:, layer].tolist()
        return [(q, d, s) for (q, d), s in zip(self.keys, column)]


def score_layers(
    prepared: PreparedPairs,
    model: torch.nn.Module,
    arch: ArchitectureRoles,
    *,
    device: str | torch.device = "cpu",
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "lens",
) -> LayerScores:
    """Score every prepared pair at every lens layer in one forward pass per batch.

    Batches go through :meth:`PreparedPairs.score` with an explicit, length-sorted plan, with
    hooks reading the hidden states; the recorded batches are matched to the plan in order,
    and the deepest layer is checked against the scores the model itself returned, which also
    proves the matching. After a CUDA out-of-memory error the whole pass is redone with half
    the token budget (the hidden states of every layer stay alive during a batch).

    Args:
        batch_tokens: token budget per batch; ``None`` = the prepared pairs' budget.

    Returns:
        The per-layer scores; ``stats["batch_tokens"]`` is the budget that worked.
    """
    import numpy as np
    import torch

    from lorascope.scoring import plan_batches

    budget = prepared.batch_tokens if batch_tokens is None else int(batch_tokens)
    oom = tuple(e for e in (getattr(torch, "OutOfMemoryError", None),
                            getattr(torch.cuda, "OutOfMemoryError", None))
                if isinstance(e, type))
    while True:
        plan = plan_batches(prepared.lengths, budget)
        try:
            with _recording(model, arch) as records:
                own = prepared.score(model, device=device, progress=progress, desc=desc,
                                     batches=plan)
            break
        except oom:
            if all(len(b) == 1 for b in plan):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of GPU memory in the lens with %d-token batches; redoing the pass "
                        "with %d", budget, max(1, budget // 2))
            budget = max(1, budget // 2)
    if len(records) != len(plan) or any(r.shape[0] != len(b) for r, b in zip(records, plan)):
        raise LensError(f"recorded {len(records)} batches for a plan of {len(plan)}: the "
                        "scoring loop no longer runs the plan in order")
    values = np.empty((len(prepared), records[0].shape[1] if records else 1), dtype=np.float64)
    for batch, scores in zip(plan, records):
        values[batch] = scores.float().cpu().numpy()
    model_scores = np.array([own[k] for k in prepared.keys], dtype=np.float64)
    stats = dict(prepared.last_stats.to_dict()) if prepared.last_stats else {}
    stats["batch_tokens"] = budget
    return LayerScores(prepared.keys, values, model_scores, stats)


def check_final_layer(scores: LayerScores, dtype: str, what: str) -> float:
    """Raise :class:`LensError` unless lens layer L reproduces the model's own scores."""
    diff = scores.final_diff
    tolerance = FINAL_LAYER_TOLERANCE.get(dtype, 1e-2)
    if diff > tolerance:
        raise LensError(
            f"{what}: the lens at the last layer differs from the model's own score by {diff:.3g} "
            f"(tolerance {tolerance:g} for {dtype}); the readout no longer matches the "
            "classifier (hidden-state or head convention changed?)"
        )
    return diff


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(adapter_dirs_by_step: Mapping[int, str | Path]) -> list[tuple[int, Path]]:
    """``(step, dir)`` sorted by step, checked: positive int steps, existing peft dirs."""
    if not adapter_dirs_by_step:
        raise ValueError("lens: no adapter checkpoints given (adapter_dirs_by_step is empty)")
    out: list[tuple[int, Path]] = []
    for step, directory in adapter_dirs_by_step.items():
        if isinstance(step, bool) or not isinstance(step, int) or step <= BASE_STEP:
            raise ValueError(f"lens: checkpoint step {step!r} ({directory}) must be an int > "
                             f"{BASE_STEP}; step {BASE_STEP} is the base model")
        if not (Path(directory) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"lens: {directory} (step {step}) is no peft adapter "
                                    "directory (no adapter_config.json)")
        out.append((step, Path(directory)))
    return sorted(out)


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text())


def _check_one_run(checkpoints: Sequence[tuple[int, Path]]) -> dict[str, Any]:
    """The checkpoints' common adapter config; ValueError naming the keys that differ."""
    step0, dir0 = checkpoints[0]
    reference = _adapter_config(dir0)
    for step, directory in checkpoints[1:]:
        config = _adapter_config(directory)
        differ = sorted(k for k in set(reference) | set(config)
                        if reference.get(k) != config.get(k))
        if differ:
            raise ValueError(
                f"lens: checkpoints {dir0} (step {step0}) and {directory} (step {step}) have "
                f"different adapter configs ({', '.join(differ)}); the lens compares "
                "checkpoints of one training run"
            )
    return reference


def _rewrites_base(config: Mapping[str, Any]) -> bool:
    init = config.get("init_lora_weights")
    return isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS)


def _adapter_manifest(adapter_dir: Path, base_dir: str | Path) -> dict[str, Any] | None:
    """An extracted adapter's manifest, verified against the base; None for a bare peft dir."""
    from lorascope import adapters

    if not (adapter_dir / adapters.MANIFEST).is_file():
        return None
    return adapters.verify(adapter_dir, base_dir)


def swap_checkpoint(model: torch.nn.Module, adapter_dir: str | Path, device: str) -> None:
    """Load another checkpoint of the same run into the model's LoRA layers and head, in place.

    Raises:
        ValueError: the checkpoint's tensors are not exactly the loaded adapter's.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(adapter_dir), device=device)
    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        extra, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
        raise ValueError(f"lens: {adapter_dir} holds other tensors than the loaded checkpoint "
                         f"(extra {extra[:3]}, missing {missing[:3]})")
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ValueError(f"lens: {adapter_dir}: peft did not place {result.unexpected_keys[:3]}")
    for module in model.modules():  # DoRA's cached weight norms (filled only when enabled)
        clear = getattr(module, "_cache_clear", None)
        if callable(clear):
            clear()
    model.eval()


# --------------------------------------------------------------------------- stage


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
        LensError: the deepest lens layer does not reproduce the model's own score.
        ValueError: bad params (naming the key), checkpoints of different runs.
    """
    from lorascope import switching
    from lorascope.evaluate import load_adapted, read_split
    from lorascope.models.reranker import default_device
    from lorascope.scoring import PreparedPairs

    settings = LensSettings.from_params(params)
    checkpoints = _checkpoints(adapter_dirs_by_step)
    adapter_config = _check_one_run(checkpoints)
    manifests = {step: _adapter_manifest(d, base_dir) for step, d in checkpoints}
    last_step, last_dir = checkpoints[-1]
    device = default_device()
    started = time.perf_counter()
    model, tokenizer, arch = load_adapted(base_dir, last_dir, dtype=settings.dtype, device=device)
    readout_for(arch)
    modules = switching.lora_modules(model, arch)
    original_base = not _rewrites_base(adapter_config)
    if not original_base:
        log.warning("init_lora_weights=%r rewrites the base weights: step %d (LoRA off) is the "
                    "residual model, not the original base", adapter_config["init_lora_weights"],
                    BASE_STEP)
    load_seconds = time.perf_counter() - started
    log.info("loaded %s + %s (step %d) on %s in %.1fs: %d LoRA modules, %d checkpoints",
             base_dir, last_dir, last_step, device, load_seconds, len(modules), len(checkpoints))

    queries, candidates, qrels = read_split(split_dir)
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=settings.max_length,
                                   batch_tokens=settings.batch_tokens, progress=progress)
    record = provenance.record(
        STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir), device=device,
        adapter_dirs={str(s): str(d) for s, d in checkpoints},
        adapter_manifests={str(s): m for s, m in manifests.items()},
        base_head_step=last_step,
    )

    dirs = dict(checkpoints)
    order = [BASE_STEP, last_step] + [s for s, _ in checkpoints[:-1]]
    per_step: dict[int, dict[str, Any]] = {}
    per_query: dict[int, dict[int, dict[str, dict[str, float]]]] = {}
    budget = settings.batch_tokens
    for step in order:
        t0 = time.perf_counter()
        if step not in (BASE_STEP, last_step):
            swap_checkpoint(model, dirs[step], device)
        swap_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        desc = f"lens step {step}" + (" (base)" if step == BASE_STEP else "")
        if step == BASE_STEP:
            with switching.zeroed(model, arch, modules.keys()):
                scores = score_layers(prepared, model, arch, device=device, batch_tokens=budget,
                                      progress=progress, desc=desc)
        else:
            scores = score_layers(prepared, model, arch, device=device, batch_tokens=budget,
                                  progress=progress, desc=desc)
        budget = scores.stats["batch_tokens"]
        seconds = time.perf_counter() - t1
        diff = check_final_layer(scores, settings.dtype, f"step {step} of {last_dir.parent}")
        t2 = time.perf_counter()
        per_query[step] = {layer: metrics.per_query(qrels, scores.run(layer),
                                                    list(settings.measures))
                           for layer in range(1, scores.depth + 1)}
        metric_seconds = time.perf_counter() - t2
        per_step[step] = _step_entry(step, per_query[step], settings, seconds=seconds,
                                     swap_seconds=swap_seconds, metric_seconds=metric_seconds,
                                     final_diff=diff, stats=scores.stats)
        primary = settings.measures[0]
        log.info("step %-6d %d pairs x %d layers in %.2fs (%.1f pairs/s); %s final %.4f, best "
                 "layer %d (%.4f), readable from layer %d", step, len(prepared),
                 scores.depth, seconds, len(prepared) / max(seconds, 1e-9), primary,
                 per_step[step]["final_value"][primary], per_step[step]["best_layer"][primary],
                 per_step[step]["best_value"][primary], per_step[step]["readable_from"][primary])

    run = {k: str(params.get(k, "")) for k in RUN_FIELDS}
    steps = sorted(per_query)
    write_table(out_parquet, _aggregate_rows(run, steps, per_query), LENS, record)
    if out_per_query is not None:
        write_table(out_per_query, _query_rows(run, steps, per_query), LENS_QUERIES, record)
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
                 "head_from_step": last_step, "original_base": original_base},
        "per_step": [per_step[s] for s in steps],
        "scoring": {"pairs": len(prepared), "batch_tokens": budget,
                    "max_length": settings.max_length, "dtype": settings.dtype,
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


def readable_from(curve: Mapping[int, float], epsilon: float) -> int | None:
    """The first (shallowest) layer whose value is >= the last layer's - ``epsilon``: from
    where relevance is readable. None for an empty curve."""
    if not curve:
        return None
    order = sorted(curve)
    final = curve[order[-1]]
    return next(layer for layer in order if curve[layer] >= final - epsilon)


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
