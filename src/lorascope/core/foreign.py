"""Adapters trained elsewhere: what a peft adapter directory holds, and whether it fits a base.

Read without torch, from ``adapter_config.json`` and the safetensors header (names and shapes
of the tensors), so the workflow checks a local adapter at DAG-build time:

* it is a LoRA adapter (``peft_type: LORA`` with ``adapter_model.safetensors``), not a full
  model (``config.json`` + weights) or another peft method;
* every LoRA module maps to a (layer, role) of the base architecture, within its depth, and
  its input width is the base's (``hidden_size``; ``intermediate_size`` for ``down``);
* besides LoRA it trains the architecture's score head (``modules_to_save``) and nothing else.

:func:`inspect_adapter` returns the rank, the roles and the LoRA variant a study records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.core import fileio, roles, variants
from lorascope.core.adapters import ADAPTER_FILES, AdapterMismatch, variant_record

#: Files of a full model (a fine-tune, not an adapter).
FULL_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin",
                    "model.safetensors.index.json")


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter trains: ``modules`` maps (layer, role) to its LoRA rank; ``config`` is
    its ``adapter_config.json``."""

    rank: int
    modules: Mapping[tuple[int, str], int]
    roles: tuple[str, ...]
    targets_name: str
    variant: tuple[str, ...]
    head: tuple[str, ...]
    base_model: str | None
    config: Mapping[str, Any]


def tensor_table(file: Path) -> dict[str, Any]:
    """The tensors of an adapter's safetensors file (``{name: {dtype, shape, ...}}``);
    :class:`AdapterMismatch` naming the file when it is not a readable safetensors file."""
    try:
        header = fileio.safetensors_header(file)[1]
    except ValueError as err:
        raise AdapterMismatch(str(err)) from err
    header.pop("__metadata__", None)
    return header


def adapter_module_ranks(weights: Path, arch: roles.ArchitectureRoles
                         ) -> dict[tuple[int, str], int]:
    """``{(layer, role): rank}`` of the LoRA modules in an adapter's safetensors file that map
    to a role of ``arch`` (from the ``lora_A`` tensor names and shapes)."""
    found: dict[tuple[int, str], int] = {}
    for name, info in tensor_table(weights).items():
        if ".lora_A." in name:
            module = roles.parse_module_name(arch, name.split(".lora_A.")[0])
            if module is not None:
                found[module] = int(info["shape"][0])
    return found


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """A LoRA adapter directory's ``adapter_config.json`` (:class:`AdapterMismatch` for a full
    model, another peft method, a base-rewriting initialisation, or missing files)."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / ADAPTER_FILES[1]
    if not config_file.is_file():
        full = [n for n in FULL_MODEL_FILES if (adapter_dir / n).is_file()]
        if full:
            raise AdapterMismatch(
                f"{adapter_dir} is a full model ({', '.join(full)}), not a peft adapter (no "
                f"{ADAPTER_FILES[1]}): only LoRA adapters can be imported")
        raise AdapterMismatch(f"{adapter_dir}: no {ADAPTER_FILES[1]}; not a peft adapter directory")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterMismatch(f"{config_file}: not a readable adapter config ({err})") from err
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterMismatch(f"{config_file}: a {kind or 'non-peft'} adapter; only LoRA "
                              "adapters (peft_type: LORA) can be imported")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and variants.rewrites_base(init.lower()):
        raise AdapterMismatch(
            f"{config_file}: a {init} adapter rewrites the base weights; convert it into a plain "
            "LoRA delta with peft (save_pretrained(path_initial_model_for_weight_conversion=...)) "
            "before importing it")
    if not (adapter_dir / ADAPTER_FILES[0]).is_file():
        raise AdapterMismatch(f"{adapter_dir}: no {ADAPTER_FILES[0]} (save the adapter with "
                              "safetensors, peft's default)")
    return config


def module_dims(arch: roles.ArchitectureRoles, config: Mapping[str, Any], role: str
                ) -> tuple[int, int] | None:
    """(input, output) width of ``role``'s linear module in a base with this config, or None
    when the config does not say (then only the module's place is checked)."""
    hidden, inner = config.get("hidden_size"), config.get("intermediate_size")
    heads = config.get("num_attention_heads")
    if not all(isinstance(v, int) for v in (hidden, inner, heads)):
        return None
    head_dim = config.get("head_dim") or hidden // heads
    attn = heads * head_dim
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    dims = {"q": (hidden, attn), "k": (hidden, kv), "v": (hidden, kv), "o": (attn, hidden),
            "qkv": (hidden, 3 * hidden), "gate": (hidden, inner), "up": (hidden, inner),
            "down": (inner, hidden)}
    return dims.get(role)


def config_rank(config: Mapping[str, Any], adapter_dir: Path) -> int:
    """An adapter config's LoRA rank: ``r``, or the largest of its ``rank_pattern``."""
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r >= 1 for r in ranks):
        raise AdapterMismatch(f"{adapter_dir / ADAPTER_FILES[1]}: no valid LoRA rank r "
                              f"(r: {config.get('r')!r})")
    return max(ranks)


def _targets_name(arch: roles.ArchitectureRoles, adapted: tuple[str, ...]) -> str:
    if adapted == arch.roles:
        return "all"
    for component in ("attn", "mlp"):
        if adapted == roles.component_roles(arch, component):  # type: ignore[arg-type]
            return component
    return "_".join(adapted)


def inspect_adapter(adapter_dir: str | Path, base_config: Mapping[str, Any]) -> AdapterInfo:
    """Check that the peft adapter in ``adapter_dir`` fits a base model whose ``config.json``
    is ``base_config``, and describe it.

    Raises:
        AdapterMismatch: naming the directory and what does not fit.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    model_type = str(base_config.get("model_type"))
    try:
        arch = roles.roles_for(model_type)
    except roles.UnsupportedArchitecture as err:
        raise AdapterMismatch(f"{adapter_dir}: its base model ({model_type}) is not supported: "
                              f"{err}") from err
    depth = roles.num_layers(base_config)
    header = tensor_table(adapter_dir / ADAPTER_FILES[0])
    modules: dict[tuple[int, str], int] = {}
    head: set[str] = set()
    for name, info in header.items():
        if ".lora_A." in name or ".lora_B." in name or ".lora_magnitude_vector" in name:
            module = name.split(".lora_")[0]
            found = roles.parse_module_name(arch, module)
            if found is None:
                raise AdapterMismatch(
                    f"{adapter_dir}: LoRA module {module!r} maps to no role of {model_type} "
                    f"(roles: {', '.join(arch.roles)}); an adapter for another architecture?")
            layer, role = found
            if layer >= depth:
                raise AdapterMismatch(f"{adapter_dir}: LoRA module {module!r} is in layer "
                                      f"{layer}; the base model has {depth} layers")
            dims = module_dims(arch, base_config, role)
            if ".lora_A." in name:
                rank, width = info["shape"]
                if dims is not None and width != dims[0]:
                    raise AdapterMismatch(
                        f"{adapter_dir}: LoRA module {module!r} takes inputs of width {width}; "
                        f"the base model's {role} takes {dims[0]} (an adapter for another base?)")
                modules[(layer, role)] = int(rank)
            elif ".lora_B." in name and dims is not None and info["shape"][0] != dims[1]:
                raise AdapterMismatch(
                    f"{adapter_dir}: LoRA module {module!r} gives outputs of width "
                    f"{info['shape'][0]}; the base model's {role} gives {dims[1]} (an adapter "
                    "for another base?)")
        else:
            owner = next((h for h in arch.head_modules if f".{h}." in f".{name}"), None)
            if owner is None:
                raise AdapterMismatch(
                    f"{adapter_dir}: tensor {name!r} is neither LoRA nor the {model_type} head "
                    f"({', '.join(arch.head_modules)}); only LoRA adapters can be imported")
            head.add(owner)
            shape = info.get("shape") or []
            if owner == arch.head_modules[0] and name.endswith("weight") and shape[:1] != [1]:
                raise AdapterMismatch(
                    f"{adapter_dir}: its score head {name!r} has shape {shape}; a reranker head "
                    "has one output (num_labels=1)")
    if not modules:
        raise AdapterMismatch(f"{adapter_dir}: no LoRA tensors in {ADAPTER_FILES[0]}")
    if not head:
        raise AdapterMismatch(
            f"{adapter_dir}: no trained score head; a reranker adapter saves its head with "
            f"LoRA (peft: modules_to_save={list(arch.head_modules)[:1]})")
    adapted = tuple(r for r in arch.roles if any(role == r for _, role in modules))
    return AdapterInfo(
        rank=max(modules.values()),
        modules=modules,
        roles=adapted,
        targets_name=_targets_name(arch, adapted),
        variant=tuple(variant_record(config)["names"]),
        head=tuple(sorted(head)),
        base_model=config.get("base_model_name_or_path"),
        config=config,
    )


def hub_adapter_dir(repo: str, revision: str | None) -> Path:
    """The local snapshot of a hub adapter (pre-fetched: there is no network at run time).

    Raises:
        AdapterMismatch: when the cache does not hold it, saying how to fetch it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    try:  # the cache as the environment names it now (huggingface_hub reads it at import)
        return Path(snapshot_download(repo, revision=revision, local_files_only=True,
                                      cache_dir=cache))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise AdapterMismatch(
            f"hub adapter {repo!r} (revision {revision or 'main'}) is not in the local Hugging "
            f"Face cache; fetch it where there is network (`huggingface-cli download {repo}"
            f"{' --revision ' + revision if revision else ''}`) and point HF_HOME at that cache"
        ) from err
