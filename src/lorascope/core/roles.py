"""The one place that maps architectures' module names to roles.

A *role* names what a linear layer does inside a transformer block, independently of how a
given implementation spells it: attention ``q, k, v, o`` (GPT-NeoX fuses the first three into
``qkv``) and MLP ``gate, up, down`` (GPT-NeoX and BERT have no gate). Everything downstream
(LoRA targets, ablation specs, reports) speaks roles and layer indices; only this module knows
raw module names.

Full module names are used everywhere (``bert.encoder.layer.3.output.dense``), never bare
suffixes, because suffixes are ambiguous: BERT's MLP ``output.dense`` is also the tail of its
attention ``attention.output.dense``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Component = Literal["attn", "mlp"]


class UnsupportedArchitecture(ValueError):
    """A model type this package has no role mapping for."""


class UnknownRole(ValueError):
    """A role name that the architecture does not have."""


@dataclass(frozen=True)
class ArchitectureRoles:
    """How one architecture lays out its per-layer linear modules.

    Attributes:
        model_type: the Hugging Face ``config.model_type``.
        layer_prefix: dotted path of the layer list inside the task model
            (``model.layers`` for ``LlamaForSequenceClassification``).
        modules: ``(role, suffix)`` pairs; ``suffix`` is the module path inside one layer.
        attention_roles: roles belonging to the attention block, in canonical order.
        mlp_roles: roles belonging to the MLP block, in canonical order.
        head_modules: modules of the sequence-classification model that are trained in full
            next to LoRA (the score head, and BERT's pooler that feeds it).
        decoder: ``True`` for causal decoders (score read at the last non-pad token),
            ``False`` for encoders (score read from ``[CLS]``).
    """

    model_type: str
    layer_prefix: str
    modules: tuple[tuple[str, str], ...]
    attention_roles: tuple[str, ...]
    mlp_roles: tuple[str, ...]
    head_modules: tuple[str, ...]
    decoder: bool

    @property
    def roles(self) -> tuple[str, ...]:
        """All roles of the architecture, attention first."""
        return self.attention_roles + self.mlp_roles

    def suffix(self, role: str) -> str:
        """The module path of ``role`` inside one layer."""
        for name, suffix in self.modules:
            if name == role:
                return suffix
        raise UnknownRole(_unknown_role_message(self, role))


def _llama_like(model_type: str) -> ArchitectureRoles:
    return ArchitectureRoles(
        model_type=model_type,
        layer_prefix="model.layers",
        modules=(
            ("q", "self_attn.q_proj"),
            ("k", "self_attn.k_proj"),
            ("v", "self_attn.v_proj"),
            ("o", "self_attn.o_proj"),
            ("gate", "mlp.gate_proj"),
            ("up", "mlp.up_proj"),
            ("down", "mlp.down_proj"),
        ),
        attention_roles=("q", "k", "v", "o"),
        mlp_roles=("gate", "up", "down"),
        head_modules=("score",),
        decoder=True,
    )


def _architectures() -> dict[str, ArchitectureRoles]:
    gpt_neox = ArchitectureRoles(
        model_type="gpt_neox",
        layer_prefix="gpt_neox.layers",
        modules=(
            ("qkv", "attention.query_key_value"),
            ("o", "attention.dense"),
            ("up", "mlp.dense_h_to_4h"),
            ("down", "mlp.dense_4h_to_h"),
        ),
        attention_roles=("qkv", "o"),
        mlp_roles=("up", "down"),
        head_modules=("score",),
        decoder=True,
    )
    bert = ArchitectureRoles(
        model_type="bert",
        layer_prefix="bert.encoder.layer",
        modules=(
            ("q", "attention.self.query"),
            ("k", "attention.self.key"),
            ("v", "attention.self.value"),
            ("o", "attention.output.dense"),
            ("up", "intermediate.dense"),
            ("down", "output.dense"),
        ),
        attention_roles=("q", "k", "v", "o"),
        mlp_roles=("up", "down"),
        head_modules=("classifier", "pooler"),
        decoder=False,
    )
    return {
        "llama": _llama_like("llama"),
        "mistral": _llama_like("mistral"),
        "gpt_neox": gpt_neox,
        "bert": bert,
    }


def supported_architectures() -> tuple[str, ...]:
    """The model types with a role mapping, sorted."""
    return tuple(sorted(_architectures()))


def roles_for(model_type: str) -> ArchitectureRoles:
    """The role mapping of a Hugging Face ``model_type``.

    Raises:
        UnsupportedArchitecture: naming the model type and the supported ones.
    """
    table = _architectures()
    try:
        return table[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(table))}"
        ) from None


def component_roles(arch: ArchitectureRoles, component: Component) -> tuple[str, ...]:
    """The roles of one component: ``"attn"`` or ``"mlp"``."""
    if component == "attn":
        return arch.attention_roles
    if component == "mlp":
        return arch.mlp_roles
    raise ValueError(f"component must be 'attn' or 'mlp', got {component!r}")


def module_name(arch: ArchitectureRoles, layer: int, role: str) -> str:
    """The full module name of ``role`` in ``layer`` (``model.layers.3.mlp.up_proj``)."""
    if layer < 0:
        raise ValueError(f"layer index must be >= 0, got {layer}")
    return f"{arch.layer_prefix}.{layer}.{arch.suffix(role)}"


def _name_pattern(arch: ArchitectureRoles) -> re.Pattern[str]:
    suffixes = "|".join(re.escape(s) for _, s in sorted(arch.modules, key=lambda m: -len(m[1])))
    return re.compile(rf"(?:^|\.){re.escape(arch.layer_prefix)}\.(\d+)\.({suffixes})$")


def parse_module_name(arch: ArchitectureRoles, name: str) -> tuple[int, str] | None:
    """``(layer, role)`` of a module name, or ``None`` when it is no role's module.

    Works on wrapped names too (peft's ``base_model.model.model.layers.3.mlp.up_proj``).
    Names of sub-modules (``...up_proj.lora_A.default``) are not role modules.
    """
    match = _name_pattern(arch).search(name)
    if match is None:
        return None
    suffix = match.group(2)
    role = next(r for r, s in arch.modules if s == suffix)
    return int(match.group(1)), role


def resolve_targets(arch: ArchitectureRoles, spec: str | Sequence[str]) -> tuple[str, ...]:
    """Roles named by a target spec, in canonical order.

    ``spec`` is ``"all"``, ``"attn"``, ``"mlp"``, one role name, or a list of role names.

    Raises:
        UnknownRole: naming the role and the architecture's roles.
    """
    if isinstance(spec, str):
        if spec == "all":
            return arch.roles
        if spec in ("attn", "mlp"):
            return component_roles(arch, spec)  # type: ignore[arg-type]
        spec = [spec]
    wanted = list(spec)
    if not wanted:
        raise UnknownRole(f"empty target role list for {arch.model_type}")
    for role in wanted:
        if role not in arch.roles:
            raise UnknownRole(_unknown_role_message(arch, role))
    return tuple(r for r in arch.roles if r in wanted)


def target_modules(
    arch: ArchitectureRoles,
    roles: Iterable[str],
    layers: Iterable[int] | None = None,
    *,
    num_layers: int | None = None,
) -> list[str]:
    """Full module names for peft's ``target_modules``.

    Args:
        arch: the architecture's mapping.
        roles: role names (validated against the architecture).
        layers: layer indices; ``None`` means all layers, which needs ``num_layers``.
        num_layers: the model's depth, used when ``layers`` is ``None``.
    """
    role_list = resolve_targets(arch, list(roles))
    if layers is None:
        if num_layers is None:
            raise ValueError("target_modules needs layers or num_layers")
        layers = range(num_layers)
    return [module_name(arch, layer, role) for layer in sorted(set(layers)) for role in role_list]


def num_layers(config: Any) -> int:
    """The number of transformer layers of a Hugging Face config (object or dict)."""
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = get(key)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the number of layers from config {type(config).__name__}")


def _unknown_role_message(arch: ArchitectureRoles, role: str) -> str:
    return (
        f"role {role!r} does not exist in architecture {arch.model_type!r}; "
        f"its roles are: {', '.join(arch.roles)} (or 'all', 'attn', 'mlp')"
    )
