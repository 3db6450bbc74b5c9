"""Declarative ablation specs turned into sets of (layer, role) LoRA modules to zero.

An *ablation* names the LoRA modules whose update is zeroed at evaluation time (the base weight
is used there); the trained score head always stays. A *sweep* is a named list of ablations,
written in the study config as::

    sweeps:
      layers:
        ablations:
          layers_5_15: {keep: {layers: "5-15"}}            # zero LoRA outside layers 5-15
          up_gate:     {keep: {roles: [up, gate]}}
          mid_mlp:     {keep: {component: mlp, layers: "5-15"}}   # fields intersect
          either:      {drop: [{layers: "0-1"}, {roles: [down]}]}  # a list is a union
          no_lora:     {drop: all}
        generate: [each_layer, boundary]                  # families, after the named ones

A *selector* is ``all`` or a mapping with any of ``component`` (``attn`` | ``mlp``),
``layers`` (``"5-15"``, ``"0-4,16-31"``, ``"7"``, an int, or a list of ints) and ``roles``
(a role name or a list of them); its fields intersect, a list of selectors is their union.
``keep: S`` zeroes every trained module outside ``S``, ``drop: S`` zeroes ``S``; with both,
zeroed = complement(keep) | drop. Only modules the adapter trained can be zeroed.

Every sweep starts with ``full`` (nothing zeroed): the reference of significance tests and of
the reproduction check. Generators (each produces only ablations that differ from ``full``):

* ``each_layer``: ``drop_layer_{i:02d}`` zeroes every trained module of layer ``i``;
* ``each_layer_role``: ``drop_layer_{i:02d}_{role}`` for every trained (layer, role);
* ``boundary``: ``keep_layers_0_{b:02d}`` keeps layers ``0..b`` for ``b = 0..L-2``
  (``b = L-1`` is ``full``) - the automated boundary-layer search of Chen et al.;
* ``svd``: ``svd_r{k}`` for every ``k`` of the sweep's ``ranks`` below the adapter's LoRA
  rank (ranks at or above it are skipped): nothing is zeroed, every trained module's update
  ``s·B·A`` is replaced by its best rank-k approximation (post-hoc SVD rank compression,
  :mod:`lorascope.core.lora_factors`), in place. Needs ``rank=`` (the adapter's ``r``)::

      sweeps:
        compression: {generate: svd, ranks: [4, 2, 1]}

An ablation may thus carry a *transform* besides its zeroed set: ``truncate_rank`` (every
LoRA module of the adapter that is not zeroed is truncated to that rank).

This module is pure Python (no torch): the workflow resolves sweeps at DAG-build time, so that
a bad spec stops the run before any job starts, with an error naming the config key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorascope.core import roles as roles_mod
from lorascope.core.names import (
    BOUNDARY,
    EACH_LAYER,
    EACH_LAYER_ROLE,
    FULL,
    GENERATORS,
    SVD,
    boundary_name,
    layer_name,
    layer_role_name,
    svd_name,
)
from lorascope.core.roles import ArchitectureRoles

log = logging.getLogger(__name__)

SELECTOR_KEYS = ("component", "layers", "roles")
SPEC_KEYS = ("keep", "drop")
SWEEP_KEYS = ("ablations", "generate", "ranks")
COMPONENTS = ("attn", "mlp")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")

Module = tuple[int, str]


class AblationError(ValueError):
    """An invalid ablation spec; the message names the config key (``sweeps.<sweep>...``)."""


@dataclass(frozen=True)
class Ablation:
    """One evaluation setting of a sweep.

    Attributes:
        name: unique within the sweep; ``full`` is the unablated adapter.
        zeroed: the ``(layer, role)`` LoRA modules whose update is zeroed.
        truncate_rank: when set, every other LoRA module's update is replaced by its best
            rank-``truncate_rank`` approximation (SVD; see :mod:`lorascope.core.lora_factors`).
    """

    name: str
    zeroed: frozenset[Module]
    truncate_rank: int | None = None

    @property
    def is_full(self) -> bool:
        """Whether the adapter is used as trained (nothing zeroed, nothing truncated)."""
        return not self.zeroed and self.truncate_rank is None

    def to_params(self, role_order: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain builtins for Snakemake ``params`` / JSON: ``{name, zeroed: [[layer, role]]}``,
        plus ``truncate_rank`` only when it is set (so zeroing ablations serialise as before).

        ``zeroed`` is sorted by layer, then by ``role_order`` (alphabetical when not given),
        so that the same ablation always serialises identically.
        """
        order = {r: i for i, r in enumerate(role_order or ())}
        ordered = sorted(self.zeroed, key=lambda m: (m[0], order.get(m[1], len(order)), m[1]))
        out: dict[str, Any] = {"name": self.name,
                               "zeroed": [[layer, role] for layer, role in ordered]}
        if self.truncate_rank is not None:
            out["truncate_rank"] = self.truncate_rank
        return out

    @classmethod
    def from_params(cls, value: Mapping[str, Any]) -> Ablation:
        """Inverse of :meth:`to_params`."""
        try:
            name = value["name"]
            pairs = value["zeroed"]
        except (KeyError, TypeError):
            raise AblationError(
                f"an ablation must be a mapping with 'name' and 'zeroed', got {value!r}"
            ) from None
        zeroed: set[Module] = set()
        for pair in pairs:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not _is_int(pair[0]) or not isinstance(pair[1], str)):
                raise AblationError(
                    f"ablation {name!r}: each zeroed module must be [layer, role], got {pair!r}"
                )
            zeroed.add((int(pair[0]), pair[1]))
        rank = value.get("truncate_rank")
        if rank is not None and (not _is_int(rank) or rank < 1):
            raise AblationError(
                f"ablation {name!r}: truncate_rank must be a positive int, got {rank!r}"
            )
        unknown = sorted(set(value) - {"name", "zeroed", "truncate_rank"})
        if unknown:
            raise AblationError(f"ablation {name!r}: unknown key {unknown[0]!r} "
                                "(an ablation has: name, zeroed, truncate_rank)")
        return cls(str(name), frozenset(zeroed), rank)


# --------------------------------------------------------------------------- layers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _span(num_layers: int) -> str:
    return f"model has {num_layers} layers: 0-{num_layers - 1}" if num_layers > 1 else (
        f"model has {num_layers} layer: 0")


def parse_layers(text: str | int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The sorted layer indices of a layer spec.

    Accepts a string of comma-separated inclusive ranges or single indices (``"5-15"``,
    ``"0-4,16-31"``, ``"7"``), an int, or a list of ints.

    Raises:
        AblationError: on bad syntax, a reversed range, or a layer outside ``0..num_layers-1``.
    """
    if num_layers < 1:
        raise AblationError(f"the model must have at least one layer, got {num_layers}")
    layers: set[int] = set()
    if _is_int(text):
        layers.add(text)  # type: ignore[arg-type]
    elif isinstance(text, str):
        if not text.strip():
            raise AblationError("empty layer spec (write e.g. '5-15', '0-4,16-31' or '7')")
        for part in text.split(","):
            match = _RANGE.match(part.strip())
            if match is None:
                raise AblationError(
                    f"bad layer range {part.strip()!r} in {text!r} "
                    "(write inclusive ranges and indices like '5-15', '0-4,16-31' or '7')"
                )
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) is not None else start
            if end < start:
                raise AblationError(f"layer range {part.strip()!r} is reversed (write '{end}-{start}')")
            layers.update(range(start, end + 1))
    elif isinstance(text, Sequence) and all(_is_int(v) for v in text) and text:
        layers.update(text)
    else:
        raise AblationError(
            f"layers must be a string like '5-15' or '0-4,16-31', an int, or a non-empty "
            f"list of ints; got {text!r}"
        )
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        worst = max(bad, key=lambda i: (i >= num_layers, abs(i)))
        raise AblationError(f"layer {worst} out of range ({_span(num_layers)})")
    return tuple(sorted(layers))


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class _Model:
    """What specs are resolved against: depth, role names and their components, trained set."""

    num_layers: int
    roles: tuple[str, ...]
    components: Mapping[str, tuple[str, ...]]
    model_type: str | None
    trained: frozenset[Module]

    def unknown_role(self, role: Any) -> str:
        where = f"architecture {self.model_type!r}" if self.model_type else "this model"
        return f"role {role!r} does not exist in {where}; its roles are: {', '.join(self.roles)}"


def _known_components() -> dict[str, str]:
    """Role name -> component, over every architecture in :mod:`lorascope.core.roles`."""
    table: dict[str, str] = {}
    for model_type in roles_mod.supported_architectures():
        arch = roles_mod.roles_for(model_type)
        table.update(dict.fromkeys(arch.attention_roles, "attn"))
        table.update(dict.fromkeys(arch.mlp_roles, "mlp"))
    return table


def _model(
    num_layers: int,
    arch_roles: Sequence[str] | ArchitectureRoles,
    trained: Collection[Module] | None,
) -> _Model:
    if not _is_int(num_layers) or num_layers < 1:
        raise AblationError(f"num_layers must be a positive int, got {num_layers!r}")
    if isinstance(arch_roles, ArchitectureRoles):
        names = arch_roles.roles
        components = {"attn": arch_roles.attention_roles, "mlp": arch_roles.mlp_roles}
        model_type: str | None = arch_roles.model_type
    else:
        names = tuple(arch_roles)
        known = _known_components()
        unknown = [r for r in names if r not in known]
        if unknown:
            raise AblationError(f"unknown role names {unknown}; known roles: {', '.join(known)}")
        components = {c: tuple(r for r in names if known[r] == c) for c in COMPONENTS}
        model_type = None
    if not names:
        raise AblationError("the architecture has no roles")
    if trained is None:
        trained_set = frozenset((layer, role) for layer in range(num_layers) for role in names)
    else:
        trained_set = frozenset((int(layer), str(role)) for layer, role in trained)
        bad = sorted(m for m in trained_set if not 0 <= m[0] < num_layers or m[1] not in names)
        if bad:
            raise AblationError(
                f"trained modules {bad[:5]} do not exist in a model of {num_layers} layers "
                f"with roles {', '.join(names)}"
            )
        if not trained_set:
            raise AblationError("the adapter has no trained LoRA modules to ablate")
    return _Model(num_layers, names, components, model_type, trained_set)


def all_modules(num_layers: int, roles: Iterable[str]) -> frozenset[Module]:
    """Every ``(layer, role)`` of a model: the default trained set."""
    names = tuple(roles)
    return frozenset((layer, role) for layer in range(num_layers) for role in names)


# --------------------------------------------------------------------------- selectors


def _select(selector: Any, model: _Model, where: str) -> frozenset[Module]:
    """The modules (trained or not) of one selector or a list of selectors (union)."""
    universe = all_modules(model.num_layers, model.roles)
    if selector == "all":
        return universe
    if isinstance(selector, list):
        if not selector:
            raise AblationError(f"{where} is an empty list of selectors")
        out: set[Module] = set()
        for i, item in enumerate(selector):
            if isinstance(item, list):
                raise AblationError(f"{where}[{i}]: nested selector lists are not allowed")
            out |= _select(item, model, f"{where}[{i}]")
        return frozenset(out)
    if not isinstance(selector, Mapping):
        raise AblationError(
            f"{where} must be 'all', a selector mapping (component, layers, roles) or a list "
            f"of them; got {selector!r}"
        )
    unknown = [k for k in selector if k not in SELECTOR_KEYS]
    if unknown:
        raise AblationError(
            f"{where}: unknown key {unknown[0]!r} (a selector has: {', '.join(SELECTOR_KEYS)})"
        )
    if not selector:
        raise AblationError(f"{where} is an empty selector (write 'all' to select every module)")
    layers: Iterable[int] = range(model.num_layers)
    role_names: tuple[str, ...] = model.roles
    if "component" in selector:
        component = selector["component"]
        if component not in COMPONENTS:
            raise AblationError(
                f"{where}.component must be one of {', '.join(COMPONENTS)}, got {component!r}"
            )
        role_names = tuple(r for r in role_names if r in model.components[component])
    if "layers" in selector:
        try:
            layers = parse_layers(selector["layers"], model.num_layers)
        except AblationError as err:
            raise AblationError(f"{where}.layers: {err}") from None
    if "roles" in selector:
        wanted = selector["roles"]
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(wanted, list) or not wanted:
            raise AblationError(f"{where}.roles must be a role name or a non-empty list of them")
        for role in wanted:
            if role not in model.roles:
                raise AblationError(f"{where}.roles: {model.unknown_role(role)}")
        role_names = tuple(r for r in role_names if r in wanted)
    return frozenset((layer, role) for layer in layers for role in role_names)


def _describe(modules: Collection[Module]) -> str:
    layers = sorted({m[0] for m in modules})
    roles = sorted({m[1] for m in modules})
    return f"{len(modules)} modules: layers {_ranges(layers)}, roles {', '.join(roles)}"


def _ranges(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _resolve_spec(spec: Any, model: _Model) -> frozenset[Module]:
    """Zeroed trained modules of one ablation spec; messages are relative to the ablation."""
    if not isinstance(spec, Mapping):
        raise AblationError(f"an ablation must be a mapping with keep and/or drop, got {spec!r}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise AblationError(f"unknown key {unknown[0]!r} (an ablation has: keep, drop)")
    if not spec:
        raise AblationError("an ablation needs keep and/or drop")
    trained = model.trained
    zeroed: set[Module] = set()
    if "keep" in spec:
        keep = _select(spec["keep"], model, "keep") & trained
        if not keep:
            raise AblationError(
                "keep selects none of the adapter's trained modules "
                f"({_describe(trained)}); to zero every LoRA update write 'drop: all'"
            )
        zeroed |= trained - keep
    if "drop" in spec:
        drop = _select(spec["drop"], model, "drop") & trained
        if not drop:
            raise AblationError(
                f"drop selects none of the adapter's trained modules ({_describe(trained)})"
            )
        zeroed |= drop
    if not zeroed:
        raise AblationError(
            f"zeroes none of the adapter's trained modules ({_describe(trained)}), so it is "
            f"the same as '{FULL}'"
        )
    if "keep" in spec and zeroed == trained:
        raise AblationError(
            "keeps none of the adapter's trained modules (drop removes all that keep kept); "
            "to zero every LoRA update write 'drop: all'"
        )
    return frozenset(zeroed)


# --------------------------------------------------------------------------- generators


def _generate(kind: str, model: _Model) -> list[Ablation]:
    trained = model.trained
    out: list[Ablation] = []
    if kind == EACH_LAYER:
        for layer in range(model.num_layers):
            zeroed = frozenset(m for m in trained if m[0] == layer)
            out.append(Ablation(layer_name(layer), zeroed))
    elif kind == EACH_LAYER_ROLE:
        for layer in range(model.num_layers):
            for role in model.roles:
                zeroed = frozenset({(layer, role)}) & trained
                out.append(Ablation(layer_role_name(layer, role), zeroed))
    elif kind == BOUNDARY:
        for b in range(model.num_layers - 1):
            zeroed = frozenset(m for m in trained if m[0] > b)
            out.append(Ablation(boundary_name(b), zeroed))
    else:  # pragma: no cover - checked by the caller (svd: _generate_svd)
        raise AssertionError(kind)
    kept = [a for a in out if a.zeroed]
    if len(kept) < len(out):
        log.debug("generator %s: skipped %d ablations that zero nothing trained", kind,
                  len(out) - len(kept))
    return kept


def _svd_ranks(spec: Mapping[str, Any], where: str, uses_svd: bool) -> list[int]:
    """The sweep's ``ranks`` list, checked: required by ``generate: svd``, used by nothing else."""
    ranks = spec.get("ranks")
    if not uses_svd:
        if ranks is not None:
            raise AblationError(f"{where}.ranks is only read by 'generate: svd', which this "
                                "sweep does not use")
        return []
    if ranks is None:
        raise AblationError(f"{where}: 'generate: svd' needs 'ranks' (e.g. ranks: [4, 2, 1])")
    if (not isinstance(ranks, list) or not ranks
            or not all(_is_int(k) and k >= 1 for k in ranks)):
        raise AblationError(f"{where}.ranks must be a non-empty list of positive ints, "
                            f"got {ranks!r}")
    if len(set(ranks)) < len(ranks):
        raise AblationError(f"{where}.ranks names a rank twice: {ranks}")
    return list(ranks)


def _generate_svd(ranks: Sequence[int], rank: int | None, where: str) -> list[Ablation]:
    """``svd_r{k}`` for every configured ``k`` below the adapter's rank, in config order."""
    if rank is None:
        raise AblationError(f"{where}.generate: svd needs the adapter's LoRA rank to skip "
                            "ranks at or above it (resolve_sweep(..., rank=r))")
    if not _is_int(rank) or rank < 1:
        raise AblationError(f"{where}: the adapter's LoRA rank must be a positive int, "
                            f"got {rank!r}")
    skipped = [k for k in ranks if k >= rank]
    if skipped:
        log.debug("%s: svd skips ranks %s (the adapter has rank %d)", where, skipped, rank)
    return [Ablation(svd_name(k), frozenset(), k) for k in ranks if k < rank]


# --------------------------------------------------------------------------- sweeps


def resolve_sweep(
    sweep_name: str,
    sweep_spec: Mapping[str, Any] | None,
    *,
    num_layers: int,
    arch_roles: Sequence[str] | ArchitectureRoles,
    trained: Collection[Module] | None = None,
    rank: int | None = None,
) -> list[Ablation]:
    """The ablations of one sweep, ``full`` first, then named ones, then generated ones.

    Args:
        sweep_name: the sweep's key under ``sweeps`` (used in error messages).
        sweep_spec: ``{ablations: {name: spec}, generate: kind | [kinds], ranks: [k, ...]}``
            (all optional; ``ranks`` goes with, and only with, ``generate: svd``).
        num_layers: the model's depth.
        arch_roles: the architecture's role names (or its :class:`ArchitectureRoles`, which
            also names the architecture in errors).
        trained: the ``(layer, role)`` modules the adapter has LoRA on; default: all layers
            times all roles.
        rank: the adapter's LoRA rank ``r``; needed by ``generate: svd`` only (its ranks at or
            above ``r`` are skipped). :func:`lorascope.core.lora_factors.adapter_rank` reads it from
            an adapter directory; at DAG-build time it is the config's adapter rank.

    Raises:
        AblationError: naming the config key, e.g.
            ``sweeps.layers.ablations.layers_5_15: layer 31 out of range (model has 8 layers: 0-7)``.
    """
    where = f"sweeps.{sweep_name}"
    try:
        model = _model(num_layers, arch_roles, trained)
    except AblationError as err:
        raise AblationError(f"{where}: {err}") from None
    spec = {} if sweep_spec is None else sweep_spec
    if not isinstance(spec, Mapping):
        raise AblationError(f"{where} must be a mapping with ablations and/or generate")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise AblationError(
            f"{where}: unknown key {unknown[0]!r} (a sweep has: {', '.join(SWEEP_KEYS)})"
        )
    result = [Ablation(FULL, frozenset())]
    seen = {FULL: f"{where} (implicit)"}

    def add(ablation: Ablation, key: str) -> None:
        if ablation.name == FULL:
            raise AblationError(
                f"{key}: the name '{FULL}' is reserved for the unablated adapter, which every "
                "sweep contains implicitly"
            )
        if ablation.name in seen:
            raise AblationError(f"{key}: duplicate ablation name {ablation.name!r} "
                                f"(also produced by {seen[ablation.name]})")
        seen[ablation.name] = key
        result.append(ablation)

    named = spec.get("ablations") or {}
    if not isinstance(named, Mapping):
        raise AblationError(f"{where}.ablations must be a mapping of name -> spec")
    for name, body in named.items():
        key = f"{where}.ablations.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise AblationError(
                f"{key}: ablation names must be letters, digits, '_', '.', '+' or '-', "
                "starting with a letter or digit"
            )
        if name == FULL:
            add(Ablation(name, frozenset()), key)  # raises the reserved-name error
        try:
            zeroed = _resolve_spec(body, model)
        except AblationError as err:
            raise AblationError(f"{key}: {err}") from None
        add(Ablation(name, zeroed), key)

    kinds = spec.get("generate") or []
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list):
        raise AblationError(f"{where}.generate must be a generator name or a list of them")
    if len(set(kinds)) < len(kinds):
        raise AblationError(f"{where}.generate names a generator twice: {kinds}")
    for kind in kinds:
        if kind not in GENERATORS:
            raise AblationError(
                f"{where}.generate: unknown generator {kind!r} (known: {', '.join(GENERATORS)})"
            )
    ranks = _svd_ranks(spec, where, SVD in kinds)
    for kind in kinds:
        generated = (_generate_svd(ranks, rank, where) if kind == SVD
                     else _generate(kind, model))
        for ablation in generated:
            add(ablation, f"{where}.generate.{kind}")
    return result


def resolve_sweeps(
    sweeps: Mapping[str, Any],
    *,
    num_layers: int,
    arch_roles: Sequence[str] | ArchitectureRoles,
    trained: Collection[Module] | None = None,
    rank: int | None = None,
) -> dict[str, list[Ablation]]:
    """:func:`resolve_sweep` for every sweep of a ``sweeps`` mapping, in config order."""
    return {
        name: resolve_sweep(name, spec, num_layers=num_layers, arch_roles=arch_roles,
                            trained=trained, rank=rank)
        for name, spec in sweeps.items()
    }
