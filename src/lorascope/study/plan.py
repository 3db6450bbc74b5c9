"""The study's job plan: which (model, adapter, step, sweep, split) the workflow evaluates.

Pure Python and cheap (no torch): the workflow calls it at DAG-build time. It also finds each
model's shape (architecture and depth) where that is knowable without loading weights, so
ablation specs are checked against it before any job starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.core.names import CHECKPOINTS
from lorascope.core.packages import package_dir
from lorascope.study.spec import ConfigError, Model, Study, Sweep


@dataclass(frozen=True)
class Shape:
    model_type: str
    num_layers: int


@dataclass(frozen=True)
class EvalJob:
    model: str
    adapter: str
    step: int
    sweep: str
    split: str


def _read_config(config_json: Path) -> dict[str, Any] | None:
    if not config_json.is_file():
        return None
    try:
        cfg = json.loads(config_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{config_json}: not a readable JSON model config ({err})") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{config_json}: not a model config (a JSON object is expected)")
    return cfg


def source_config(kind: str, source: Mapping[str, Any]) -> dict[str, Any] | None:
    """A base model's ``config.json`` as far as it is knowable without loading weights (a
    tiny model's from its spec), or None (hub models not in the local cache, GGUF files):
    then the job checks at its start."""
    if kind == "tiny":
        tiny = source["tiny"]
        return {"model_type": tiny["architecture"], "num_hidden_layers": tiny["layers"],
                "hidden_size": tiny["width"], "intermediate_size": 4 * tiny["width"]}
    if kind == "path":
        return _read_config(Path(source["path"]) / "config.json")
    if kind == "package":
        root = package_dir(source["package"]["name"])
        if root is None:
            return None
        return _read_config(root / source["package"]["path"] / "config.json")
    if kind == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers depends on it
            return None
        found = try_to_load_from_cache(source["hub"], "config.json", revision=source.get("revision"))
        return _read_config(Path(found)) if isinstance(found, str) else None
    return None


def model_shape(model: Model) -> Shape | None:
    """Architecture and depth from the config alone (:func:`source_config`), or None."""
    cfg = source_config(model.kind, model.source)
    if cfg is None:
        return None
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    if "model_type" not in cfg or layers is None:
        return None
    return Shape(cfg["model_type"], int(layers))


def sweep_applies(sweep: Sweep, model: Model) -> list[str]:
    """The adapters of ``model`` that ``sweep`` evaluates (an imported adapter only at its
    one step, when the sweep names a step)."""
    if sweep.models is not None and model.name not in sweep.models:
        return []
    names = [a.name for a in model.adapters()
             if sweep.step == "last" or int(sweep.step) in model.steps_of(a.name)]
    return names if sweep.adapters is None else [n for n in names if n in sweep.adapters]


def sweep_step(sweep: Sweep, model: Model, adapter: str) -> int:
    """The checkpoint of ``adapter`` that ``sweep`` evaluates."""
    return model.steps_of(adapter)[-1] if sweep.step == "last" else int(sweep.step)


@dataclass(frozen=True)
class CurveJob:
    """One ``evaluate_checkpoints`` job: the full adapter of ``steps`` of a run on a split."""

    model: str
    adapter: str
    split: str
    steps: tuple[int, ...]

    def evaluations(self) -> list[EvalJob]:
        """The (model, adapter, step, ``checkpoints``, split) evaluations it does."""
        return [EvalJob(self.model, self.adapter, s, CHECKPOINTS, self.split) for s in self.steps]


def curve_jobs(study: Study) -> Iterator[CurveJob]:
    """The checkpoint curves: every checkpoint on ``evaluation.splits``, the last one on
    ``evaluation.final_splits``; one job per run and split (adapters with ``curves: false``
    have none)."""
    for model in study.models.values():
        for adapter in model.adapters():
            if not adapter.curves:
                continue
            steps = model.steps_of(adapter.name)
            for split in study.evaluation.splits:
                yield CurveJob(model.name, adapter.name, split, steps)
            for split in study.evaluation.final_splits:
                yield CurveJob(model.name, adapter.name, split, steps[-1:])


def curve_steps(study: Study, model: str, adapter: str, split: str) -> tuple[int, ...]:
    """The checkpoints a curve job of ``model``'s ``adapter`` scores on ``split``."""
    steps = study.models[model].steps_of(adapter)
    return steps if split in study.evaluation.splits else steps[-1:]


def evaluation_jobs(study: Study) -> Iterator[EvalJob]:
    """Every evaluation: the checkpoint curves' (done by :func:`curve_jobs`), then each
    sweep's (one ``evaluate`` job each, :func:`sweep_jobs`)."""
    for job in curve_jobs(study):
        yield from job.evaluations()
    yield from sweep_jobs(study)


def sweep_jobs(study: Study) -> Iterator[EvalJob]:
    """Every ``evaluate`` job: each sweep on each of its adapters and splits."""
    for sweep in study.sweeps.values():
        for model in study.models.values():
            for adapter in sweep_applies(sweep, model):
                for split in sweep.splits:
                    yield EvalJob(model.name, adapter, sweep_step(sweep, model, adapter),
                                  sweep.name, split)


def stored_rank(adapter) -> int:
    """The LoRA rank of the extracted adapter on disk: PiSSA/OLoRA runs are converted to a
    plain LoRA delta of twice the trained rank at extraction."""
    return 2 * adapter.rank if adapter.converted_at_extraction else adapter.rank


def adapter_of(model: Model, name: str):
    """One adapter of ``model`` by name, trained or imported."""
    for adapter in model.adapters():
        if adapter.name == name:
            return adapter
    raise KeyError(f"model {model.name!r} has no adapter {name!r}")


def check_plan(study: Study) -> None:
    """Checks that need each model's shape: ablation specs and adapter target roles."""
    from lorascope.core.ablation import AblationError
    from lorascope.core.roles import UnknownRole, UnsupportedArchitecture, resolve_targets, roles_for

    if CHECKPOINTS in study.sweeps:
        raise ConfigError(f"config key 'sweeps.{CHECKPOINTS}': the name is reserved (checkpoint curves)")
    for model in study.models.values():
        try:
            shape = model_shape(model)
        except ConfigError as err:
            raise ConfigError(f"config key 'models.{model.name}': {err}") from err
        if shape is None:
            continue
        try:
            arch = roles_for(shape.model_type)
        except UnsupportedArchitecture as err:
            raise ConfigError(f"config key 'models.{model.name}': {err}") from err
        trained_roles = {a.name: a.roles or arch.roles for a in model.imported}
        for adapter in model.training.adapters:
            try:
                trained_roles[adapter.name] = resolve_targets(arch, adapter.targets)
            except UnknownRole as err:
                raise ConfigError(
                    f"config key 'models.{model.name}' / adapter {adapter.name}: {err}"
                ) from err
        for sweep in study.sweeps.values():
            for adapter in sweep_applies(sweep, model):
                try:
                    _resolve(sweep, model, adapter, shape, arch, trained_roles[adapter])
                except AblationError as err:
                    raise ConfigError(
                        f"config key {err} [model {model.name}, adapter {adapter}]"
                    ) from err


def _resolve(sweep: Sweep, model: Model, adapter: str, shape: Shape, arch: Any,
             roles: Sequence[str]) -> list[Any]:
    """The ablations of ``sweep`` for one adapter of ``model`` (trained on ``roles``)."""
    from lorascope.core.ablation import resolve_sweep

    trained = {(layer, role) for layer in range(shape.num_layers) for role in roles}
    return resolve_sweep(sweep.name, sweep.spec(), num_layers=shape.num_layers, arch_roles=arch,
                         trained=trained, rank=stored_rank(adapter_of(model, adapter)))


def sweep_size(study: Study, model: str, adapter: str, sweep: str) -> int:
    """How many scoring passes one ``evaluate`` job makes (``full`` included): its expected
    cost, which the workflow turns into a scheduling priority (longest jobs first). 1 when the
    model's shape is not known before it is prepared."""
    from lorascope.core.roles import resolve_targets, roles_for

    m = study.models[model]
    shape = model_shape(m)
    if shape is None:
        return 1
    arch = roles_for(shape.model_type)
    roles = resolve_targets(arch, adapter_of(m, adapter).targets)
    return len(_resolve(study.sweeps[sweep], m, adapter, shape, arch, roles))


def adapter_fields(study: Study, model: str, adapter: str) -> dict[str, object]:
    """How a summary row describes an adapter: its rank, targets and variant."""
    from lorascope.core import variants

    a = adapter_of(study.models[model], adapter)
    return {"rank": a.rank, "targets": a.summary_targets, "variant": variants.label(a.variant)}


def zero_shot_jobs(study: Study) -> list[tuple[str, str]]:
    """(model, split) of every zero-shot ranking: each model that has one, on every split."""
    return [(m.name, split) for m in study.models.values() if m.zero_shot
            for split in study.splits]
