"""Role mapping against the real module names of tiny models of every supported architecture."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from lorascope.core import roles

ARCHITECTURES = ("llama", "mistral", "gpt_neox", "bert")


def _tiny_classifier(model_type: str):
    """A randomly initialised 3-layer sequence classifier of ``model_type``."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
    )

    shape = {
        "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
        "intermediate_size": 64, "num_labels": 1, "pad_token_id": 0,
    }  # fmt: skip
    config = {
        "llama": lambda: LlamaConfig(**shape),
        "mistral": lambda: MistralConfig(num_key_value_heads=2, **shape),
        "gpt_neox": lambda: GPTNeoXConfig(**shape),
        "bert": lambda: BertConfig(**shape),
    }[model_type]()
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return _tiny_classifier(request.param)


def test_every_role_is_an_existing_linear(model) -> None:
    import torch

    arch = roles.roles_for(model.config.model_type)
    modules = dict(model.named_modules())
    depth = roles.num_layers(model.config)
    assert depth == 3
    for layer in range(depth):
        for role in arch.roles:
            name = roles.module_name(arch, layer, role)
            assert isinstance(modules.get(name), torch.nn.Linear), name
            assert roles.parse_module_name(arch, name) == (layer, role)
    for head in arch.head_modules:
        assert any(n == head or n.endswith("." + head) for n in modules), head


def test_parse_finds_exactly_the_role_modules(model) -> None:
    arch = roles.roles_for(model.config.model_type)
    parsed = {}
    for name, _ in model.named_modules():
        hit = roles.parse_module_name(arch, name)
        if hit is not None:
            parsed[hit] = name
    assert set(parsed) == {(layer, role) for layer in range(3) for role in arch.roles}


def test_peft_wrapped_names_parse() -> None:
    llama = roles.roles_for("llama")
    assert roles.parse_module_name(llama, "base_model.model.model.layers.3.mlp.up_proj") == (
        3,
        "up",
    )
    assert (
        roles.parse_module_name(llama, "base_model.model.model.layers.3.mlp.up_proj.lora_A") is None
    )
    assert roles.parse_module_name(llama, "model.layers.3.mlp") is None
    bert = roles.roles_for("bert")
    wrapped = "base_model.model.bert.encoder.layer.11.attention.output.dense"
    assert roles.parse_module_name(bert, wrapped) == (11, "o")
    assert roles.parse_module_name(bert, "bert.encoder.layer.2.output.dense") == (2, "down")


def test_bert_output_dense_is_not_attention_output_dense() -> None:
    bert = roles.roles_for("bert")
    names = roles.target_modules(bert, ["down"], num_layers=2)
    assert names == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert roles.module_name(bert, 0, "o") == "bert.encoder.layer.0.attention.output.dense"


def test_components_and_targets() -> None:
    neox = roles.roles_for("gpt_neox")
    assert roles.component_roles(neox, "attn") == ("qkv", "o")
    assert roles.component_roles(neox, "mlp") == ("up", "down")
    llama = roles.roles_for("llama")
    assert roles.resolve_targets(llama, "all") == ("q", "k", "v", "o", "gate", "up", "down")
    assert roles.resolve_targets(llama, "mlp") == ("gate", "up", "down")
    assert roles.resolve_targets(llama, ["down", "q"]) == ("q", "down")
    assert roles.resolve_targets(llama, "v") == ("v",)
    names = roles.target_modules(llama, ["q", "down"], layers=[1, 0])
    assert names == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ]
    with pytest.raises(ValueError, match="num_layers"):
        roles.target_modules(llama, ["q"])


def test_unsupported_architecture_lists_supported() -> None:
    with pytest.raises(
        roles.UnsupportedArchitecture, match="'qwen2'.*bert, gpt_neox, llama, mistral"
    ):
        roles.roles_for("qwen2")


def test_unknown_role_names_role_and_architecture() -> None:
    neox = roles.roles_for("gpt_neox")
    with pytest.raises(roles.UnknownRole, match=r"'gate'.*'gpt_neox'.*qkv, o, up, down"):
        roles.resolve_targets(neox, ["gate"])
    with pytest.raises(roles.UnknownRole, match="'q'"):
        roles.module_name(neox, 0, "q")


def test_num_layers_from_dict() -> None:
    assert roles.num_layers({"num_hidden_layers": 6}) == 6
    with pytest.raises(ValueError):
        roles.num_layers({})
