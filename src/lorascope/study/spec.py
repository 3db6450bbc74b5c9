"""The validated study as typed, frozen dataclasses (built by :mod:`lorascope.study.parse`).

Nothing here reads files or imports a stage; the workflow builds a :class:`Study` once at
DAG-build time and hands each rule its slice of it (:mod:`lorascope.study.slices`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lorascope.core import variants
from lorascope.core.provenance import config_hash


class ConfigError(ValueError):
    """An invalid study config; the message names the config key and the value."""


@dataclass(frozen=True)
class TrainData:
    """Where training groups come from and how they are built."""

    source: Literal["embedded", "ir_datasets"]
    dataset: str | tuple[str, ...]
    group_size: int
    min_relevance: int
    negatives: str
    negatives_depth: int
    max_queries: int | None

    @property
    def datasets(self) -> tuple[str, ...]:
        """The collections training groups come from (one, or several together)."""
        return (self.dataset,) if isinstance(self.dataset, str) else tuple(self.dataset)


#: A split's own-file keys (:class:`Split`).
SPLIT_FILE_KEYS = ("run", "topics", "qrels", "collection", "docstore")


@dataclass(frozen=True)
class Split:
    """A reranking split: judged queries, first-stage top-``depth`` candidates, qrels."""

    name: str
    source: Literal["embedded", "ir_datasets", "files"]
    dataset: str
    depth: int
    queries: int | None
    #: Your own files (absolute paths; see :mod:`lorascope.data.files`): the first-stage run
    #: (``files``, or ``ir_datasets`` without scoreddocs), topics, qrels, and the passages as
    #: a collection file or an ir_datasets docstore id.
    run: str | None = None
    topics: str | None = None
    qrels: str | None = None
    collection: str | None = None
    docstore: str | None = None

    def files(self) -> list[str]:
        """The local files the split is built from (its job's inputs)."""
        return [p for p in (self.run, self.topics, self.qrels, self.collection) if p]

    def same_collection(self, train: TrainData) -> bool:
        return self.source == train.source and self.dataset in train.datasets


@dataclass(frozen=True)
class LoraSettings:
    """LoRA settings shared by a model's adapters.

    ``rslora`` and ``dora`` are the defaults of adapters that set no ``variant`` of their
    own; an adapter's ``variant`` replaces them (see :class:`Adapter`).
    """

    alpha: float
    dropout: float
    rslora: bool
    dora: bool


@dataclass(frozen=True)
class Adapter:
    """One LoRA run setup; its name is the {adapter} wildcard.

    Attributes:
        rank: LoRA rank r.
        targets: ``all``/``attn``/``mlp`` or a tuple of roles.
        targets_name: the targets' part of the name.
        variant: the LoRA variant(s) trained, canonical (sorted, see
            :func:`lorascope.core.variants.canonical`); ``()`` = plain LoRA. When the adapter's
            config entry has a ``variant`` key it is exactly that (the study-wide
            ``training.lora.dora/rslora`` booleans do not add to it); otherwise it comes from
            those booleans.
        variant_in_name: the variant was given on the adapter itself, so the name carries it:
            ``r<rank>-<targets>-<variant>`` (``r8-all-dora_rslora``); adapters following the
            booleans keep the name ``r<rank>-<targets>``.
        curves: its checkpoints are evaluated on ``evaluation.splits`` and
            ``final_splits`` (the checkpoint curves); ``False``: only where a sweep or an
            analysis reads them. Not part of the run: the trained adapter is the same.
    """

    rank: int
    targets: str | tuple[str, ...]
    targets_name: str
    variant: tuple[str, ...] = ()
    variant_in_name: bool = False
    curves: bool = True

    @property
    def name(self) -> str:
        base = f"r{self.rank}-{self.targets_name}"
        if self.variant_in_name and self.variant:
            return f"{base}-{variants.label(self.variant)}"
        return base

    @property
    def summary_targets(self) -> str:
        """Its targets as summaries and the report group adapters by."""
        return self.targets_name

    @property
    def init(self) -> str:
        """Initialisation of A and B: ``default``, ``pissa``, ``olora`` or ``eva``."""
        return variants.init_of(self.variant)

    @property
    def converted_at_extraction(self) -> bool:
        """Extracted as a rank-2r LoRA delta on the original base (PiSSA/OLoRA)."""
        return variants.rewrites_base(self.init)

    def train_fields(self) -> dict[str, Any]:
        """``use_dora``, ``use_rslora`` (and ``init`` unless default) for ``TrainSettings``."""
        return variants.train_fields(self.variant)


@dataclass(frozen=True)
class ImportedAdapter:
    """A LoRA adapter trained elsewhere (a peft directory, or a hub adapter in the local
    cache), an adapter of the study like a trained one with one checkpoint, ``step``.

    Attributes:
        name: the {adapter} wildcard, chosen by the user (no dash: never a trained name).
        source: ``{"path": abs dir}`` or ``{"hub": id, "revision": rev}``.
        step: the number its one checkpoint is known by.
        rank: its LoRA rank (the largest, with a per-module ``rank_pattern``).
        targets_name: the roles it adapts: ``all``, ``attn``, ``mlp`` or the roles joined by
            ``_`` (``imported`` while the base's architecture is unknown).
        variant: its LoRA variant(s), canonical (``dora``, ``rslora``).
        curves: evaluated on ``evaluation.splits`` and ``final_splits`` like a trained
            adapter's checkpoints.
    """

    name: str
    source: Mapping[str, Any]
    step: int
    rank: int
    targets_name: str
    variant: tuple[str, ...] = ()
    curves: bool = True
    #: The roles it adapts (``None``: known once the base model is prepared).
    roles: tuple[str, ...] | None = None

    #: Imported adapters are used as they are (never rewritten like PiSSA/OLoRA runs).
    converted_at_extraction = False
    init = "default"

    @property
    def targets(self) -> str | tuple[str, ...]:
        """Its roles, as a trained adapter's ``targets`` (``all`` while unknown)."""
        return self.roles if self.roles is not None else "all"

    @property
    def summary_targets(self) -> str:
        """``imported <targets>``: the report never groups it with the trained runs (Table
        2's ranks, the variants table's (targets, rank) groups)."""
        return f"imported {self.targets_name}"


@dataclass(frozen=True)
class Training:
    adapters: tuple[Adapter, ...]
    steps: tuple[int, ...]
    lr: float
    schedule: Literal["constant", "linear"]
    decay_steps: int | None
    warmup_steps: int
    queries_per_step: int
    micro_batch_queries: int
    group_size: int | None
    max_length: int
    batch_tokens: int | None
    base_dropout: float | None
    weight_decay: float
    precision: str
    gradient_checkpointing: bool | str
    quantize_4bit: bool
    lora: LoraSettings


#: Snakemake ``mem_mb`` per model stage unless a model's ``mem_mb`` says otherwise (prepare:
#: preparing the base; train: training; score: every job that loads the model to score pairs).
#: Enough for the small models measured here (MiniLM, SmolLM2-135M); a 7-8B model needs more.
MEM_MB = {"prepare": 8000, "train": 16000, "score": 8000}


@dataclass(frozen=True)
class Model:
    """A base model entry; ``kind`` says which source key it used."""

    name: str
    kind: Literal["hub", "path", "package", "gguf", "tiny"]
    source: Mapping[str, Any]
    label: str
    mechanics_only: bool
    training: Training
    zero_shot: Mapping[str, Any] | None = None
    imported: tuple[ImportedAdapter, ...] = ()
    mem_mb: Mapping[str, int] = field(default_factory=dict)

    def memory_mb(self, stage: str) -> int:
        """Snakemake ``mem_mb`` of this model's ``stage`` jobs (:data:`MEM_MB`): the config's
        measured value, else the default."""
        if stage not in MEM_MB:
            raise KeyError(f"no memory stage {stage!r} (known: {', '.join(MEM_MB)})")
        return int(self.mem_mb.get(stage, MEM_MB[stage]))

    def adapters(self) -> tuple[Adapter | ImportedAdapter, ...]:
        """Every adapter of the model: the trained ones, then the imported ones."""
        return (*self.training.adapters, *self.imported)

    def steps_of(self, adapter: str) -> tuple[int, ...]:
        """The checkpoint steps of one adapter (an imported adapter has one)."""
        for imported in self.imported:
            if imported.name == adapter:
                return (imported.step,)
        return self.training.steps

    def is_imported(self, adapter: str) -> bool:
        return any(a.name == adapter for a in self.imported)


@dataclass(frozen=True)
class Significance:
    test: Literal["wilcoxon", "ttest"]
    correction: Literal["holm", "bonferroni", "none"]
    alpha: float


@dataclass(frozen=True)
class Convergence:
    split: str
    measure: str
    epsilon: float


@dataclass(frozen=True)
class Evaluation:
    """``splits``: every checkpoint is evaluated on them; ``final_splits``: the last
    checkpoint only (none of them is also in ``splits``)."""

    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    final_splits: tuple[str, ...]
    batch_tokens: int
    precision: str
    significance: Significance
    convergence: Convergence


#: The sweep generator of post-hoc SVD rank compression (one entry per rank: svd_r<k>).
@dataclass(frozen=True)
class Sweep:
    """Ablations of one checkpoint (``step``: an int or 'last') of chosen models/adapters.

    ``ranks`` (with ``generate: svd`` only): the ranks each adapter is compressed to, in the
    config's order; ranks at or above an adapter's own rank are skipped for that adapter.
    """

    name: str
    adapters: tuple[str, ...] | None
    models: tuple[str, ...] | None
    step: int | str
    splits: tuple[str, ...]
    generate: str | None
    ablations: Mapping[str, Any]
    ranks: tuple[int, ...] | None = None
    compare: tuple[tuple[str, str], ...] = ()

    def spec(self) -> dict[str, Any]:
        """The declarative part that :func:`lorascope.core.ablation.resolve_sweep` reads."""
        out: dict[str, Any] = {"ablations": copy.deepcopy(dict(self.ablations))}
        if self.generate:
            out["generate"] = self.generate
        if self.ranks is not None:
            out["ranks"] = list(self.ranks)
        return out


@dataclass(frozen=True)
class Selection:
    """The models and adapters an analysis covers (``None`` = every one)."""

    models: tuple[str, ...] | None
    adapters: tuple[str, ...] | None

    def selects(self, model: Model) -> list[str]:
        """The names of ``model``'s adapters this analysis covers (``[]``: not this model)."""
        if self.models is not None and model.name not in self.models:
            return []
        names = [a.name for a in model.adapters()]
        return names if self.adapters is None else [n for n in names if n in self.adapters]


#: In an analysis's ``steps`` list: the run's last checkpoint, whatever its step.
LAST_STEP = "last"


def resolve_steps(wanted: tuple[int | str, ...] | None, have: tuple[int, ...] | list[int], *,
                  default_all: bool) -> list[int]:
    """The checkpoint steps an analysis chose from a run's ``have`` (ascending): ``wanted``
    (``"last"`` = the last checkpoint), or when ``None`` every checkpoint (``default_all``) or
    the last one."""
    if wanted is None:
        return list(have) if default_all else [have[-1]]
    return sorted({have[-1] if s == LAST_STEP else int(s) for s in wanted})


def read_steps(chosen: list[int], have: tuple[int, ...] | list[int]) -> list[int]:
    """The checkpoints a base-vs-checkpoints job reads: the chosen ones and the run's last,
    whose trained score head serves the base model (step 0)."""
    return sorted({*chosen, have[-1]})


@dataclass(frozen=True)
class Study:
    """The whole, validated study. ``raw`` is the defaults-filled config dict.

    ``analyses`` holds the parsed config of every analysis the study asks for (its
    ``analyses.<name>`` key is present), by name; see :mod:`lorascope.analyses`.
    """

    name: str
    seed: int
    reference: str | None
    train: TrainData
    splits: Mapping[str, Split]
    evaluation: Evaluation
    models: Mapping[str, Model]
    sweeps: Mapping[str, Sweep]
    raw: Mapping[str, Any] = field(repr=False)
    analyses: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.evaluation.metrics

    @property
    def hash(self) -> str:
        return config_hash(self.raw)

    def analysis(self, name: str) -> Any:
        """The parsed config of analysis ``name``, or None when the study does not ask for it."""
        return self.analyses.get(name)

    def run_split_jobs(self, name: str) -> list[dict[str, str]]:
        """The wildcards (model, adapter, split) of analysis ``name``, one job per selected run
        and split (its config is a :class:`Selection` with ``splits``); [] when the study does
        not ask for it."""
        spec = self.analysis(name)
        if spec is None:
            return []
        return [{"model": m.name, "adapter": adapter, "split": split}
                for m in self.models.values() for adapter in spec.selects(m)
                for split in spec.splits]

    def holdout_splits(self) -> list[Split]:
        """Splits sampled from the training collection (their queries leave training)."""
        return [s for s in self.splits.values() if s.same_collection(self.train)]
