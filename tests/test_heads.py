"""Attention heads edited in place (lorascope.core.heads) on tiny LLaMA / Mistral / GPT-NeoX /
BERT rerankers with random LoRA adapters on every role (``o`` included).

Pins: zeroing a head's output equals a fresh load with that head's columns of the output
projection (and of ``lora_A`` on it) zeroed; leaving the context restores the model bitwise;
mean ablation writes the recorded mean; the layout matches the config.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import (as_tensor, assert_same_state, build_adapter, build_base, load_adapted,
                     model_state, prepare)

from lorascope.core import heads

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = ["llama", "mistral", "gpt_neox", "bert"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    out = {}
    for model_type in ARCHITECTURES:
        base = build_base(root / model_type, model_type)
        out[model_type] = (base, build_adapter(base, root / f"{model_type}-adapter"))
    return out


def _zeroed_reference(base_dir, adapter_dir, arch_heads):
    """A fresh load with the heads' columns of ``o`` (base weight and lora_A) zeroed."""
    import torch

    model, tokenizer, arch = load_adapted(base_dir, adapter_dir)
    layout = heads.head_layout(model, arch)
    with torch.no_grad():
        for layer, head in arch_heads:
            o = heads.o_module(model, arch, layer)
            cols = layout.columns(head)
            getattr(o, "base_layer", o).weight[:, cols] = 0
            if hasattr(o, "lora_A"):
                o.lora_A["default"].weight[:, cols] = 0
    return model


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_zeroed_head_equals_zeroed_output_columns_and_restores(adapted, model_type):
    import torch

    base_dir, adapter_dir = adapted[model_type]
    model, tokenizer, arch = load_adapted(base_dir, adapter_dir)
    layout = heads.head_layout(model, arch)
    assert (layout.layers, layout.heads, layout.head_dim) == (3, 4, 8)
    prepared = prepare(tokenizer, arch)
    clean = as_tensor(prepared.score(model, progress=False))
    before = model_state(model)
    for chosen in ([(1, 2)], [(0, 0), (2, 3)]):
        with heads.ablated_heads(model, arch, chosen):
            ablated = as_tensor(prepared.score(model, progress=False))
        reference = as_tensor(prepared.score(_zeroed_reference(base_dir, adapter_dir, chosen),
                                             progress=False))
        torch.testing.assert_close(ablated, reference, rtol=0, atol=1e-5)
        assert (ablated - clean).abs().max() > 1e-4  # the head mattered
    assert_same_state(before, model_state(model))
    assert torch.equal(as_tensor(prepared.score(model, progress=False)), clean)


def test_mean_ablation_writes_the_recorded_mean(adapted):
    import torch

    base_dir, adapter_dir = adapted["llama"]
    model, tokenizer, arch = load_adapted(base_dir, adapter_dir)
    prepared = prepare(tokenizer, arch)
    with heads.HeadMeans().recording(model, arch) as recorder:
        prepared.score(model, progress=False)
    means = recorder.means()
    assert set(means) == {0, 1, 2} and means[0].shape == (32,)
    seen = []

    def spy(layer, x):
        if layer == 1:
            seen.append(x.clone())

    with heads.ablated_heads(model, arch, [(1, 2)], mode="mean", means=means):
        with heads.edited_heads(model, arch, spy):
            prepared.score(model, progress=False)
    cols = heads.HeadLayout(3, 4, 8).columns(2)
    for x in seen:
        assert torch.equal(x[..., cols], means[1][cols].expand_as(x[..., cols]))
    with pytest.raises(ValueError, match="mean head outputs of layers"):
        with heads.ablated_heads(model, arch, [(0, 1)], mode="mean", means={}):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with heads.ablated_heads(model, arch, [(0, 4)]):
            pass
