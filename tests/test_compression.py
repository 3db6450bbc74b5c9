"""Post-hoc SVD rank compression: the factor maths against dense numpy, in-place truncation on
tiny LLaMA / GPT-NeoX / BERT adapters (LoRA, rsLoRA, DoRA) against an exported rank-k adapter
loaded with plain peft, and bitwise restoration."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from helpers import as_tensor, assert_same_state, build_adapter, load_adapted, model_state, prepare

from lorascope.core import fileio, roles
from lorascope.core.lora_factors import FactorError, energy_kept
from lorascope.core.lora_factors import adapter_rank, lora_svd, read_adapter, truncate_factors
from lorascope.analyses.compression.stage import export_compressed

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- maths (numpy)


def _factors(r: int, d_in: int, d_out: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, d_in, generator=g, dtype=torch.float64),
            torch.randn(d_out, r, generator=g, dtype=torch.float64))


def _dense_truncation(a, b, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(b.numpy() @ a.numpy(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize("r, d_in, d_out", [(6, 20, 15), (8, 5, 30), (8, 30, 5), (1, 7, 9)])
def test_svd_of_factors_equals_dense_svd(r, d_in, d_out) -> None:
    a, b = _factors(r, d_in, d_out)
    dense = np.linalg.svd(b.numpy() @ a.numpy(), compute_uv=False)
    svd = lora_svd(a, b)
    p = min(r, d_in, d_out)
    assert svd.sigma.shape == (p,)
    np.testing.assert_allclose(svd.sigma.numpy(), dense[:p], rtol=1e-5)
    np.testing.assert_allclose((svd.u * svd.sigma) @ svd.vt, b @ a, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("r, d_in, d_out", [(6, 20, 15), (8, 5, 30)])
def test_rank_k_factors_equal_dense_truncation(r, d_in, d_out) -> None:
    a, b = _factors(r, d_in, d_out, seed=1)
    sigma = np.linalg.svd(b.numpy() @ a.numpy(), compute_uv=False)
    for k in (1, 2, 4):
        a_k, b_k, kept = truncate_factors(a, b, k)
        assert a_k.shape == a.shape and b_k.shape == b.shape
        assert not a_k[k:].any() and not b_k[:, k:].any()  # zero-padded beyond k
        np.testing.assert_allclose((b_k @ a_k).numpy(), _dense_truncation(a, b, k),
                                   rtol=1e-5, atol=1e-9)
        assert kept == pytest.approx((sigma[:k] ** 2).sum() / (sigma**2).sum(), rel=1e-9)
        a_u, b_u, _ = truncate_factors(a, b, k, pad=False)
        assert a_u.shape == (k, d_in) and b_u.shape == (d_out, k)
        np.testing.assert_allclose(b_u @ a_u, b_k @ a_k, rtol=1e-12, atol=1e-12)


def test_full_rank_rebuilds_the_product_and_keeps_dtype() -> None:
    import torch

    a, b = _factors(4, 12, 10, seed=2)
    a32, b32 = a.float(), b.float()
    a_k, b_k, kept = truncate_factors(a32, b32, 4)
    assert a_k.dtype == torch.float32 and kept == pytest.approx(1.0)
    np.testing.assert_allclose((b_k @ a_k).numpy(), (b32 @ a32).numpy(), rtol=1e-5, atol=1e-5)
    a_big, b_big, _ = truncate_factors(a, b, 9, pad=False)  # k > r: zero-padded, exact product
    assert a_big.shape == (9, 12) and not a_big[4:].any()
    np.testing.assert_allclose(b_big @ a_big, b @ a, rtol=1e-10, atol=1e-10)


def test_energy_and_bad_ranks() -> None:
    import torch

    assert energy_kept(torch.zeros(3), 1) == 1.0
    assert energy_kept(torch.tensor([3.0, 4.0]), 1) == pytest.approx(9 / 25)
    a, b = _factors(3, 4, 5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FactorError, match="positive int"):
            truncate_factors(a, b, bad)
    with pytest.raises(FactorError, match="do not chain"):
        truncate_factors(a, b[:, :2], 1)


# --------------------------------------------------------------------------- tiny models
#
# The equivalence tests run the tiny models in float64: random LoRA weights make these models
# sensitive enough that float32 kernels choosing another summation order for a rank-1 matmul
# than for a zero-padded rank-4 one move a score by ~1e-5 - rounding, not maths. In float64
# the same comparisons agree to ~1e-12, so atol 1e-5 pins the maths with a wide margin.
# Restoration is checked bitwise in float32 as well.

VARIANTS = [("llama", "lora"), ("llama", "rslora"), ("gpt_neox", "dora"), ("bert", "lora"),
            ("bert", "dora")]


def to_float64(adapter_dir: Path) -> Path:
    """Rewrite a saved adapter's floating tensors as float64 (a valid peft adapter still)."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = {k: v.double() if v.is_floating_point() else v
               for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return adapter_dir


def load_double(base_dir: Path, adapter_dir: Path):
    """The base reranker in float64 with the adapter loaded by plain peft onto it."""
    import torch
    from peft import PeftModel

    from lorascope.models.reranker import load_reranker

    torch.manual_seed(0)
    base, tokenizer, arch = load_reranker(base_dir)
    model = PeftModel.from_pretrained(base.double(), str(adapter_dir), is_trainable=False)
    model.eval()
    return model, tokenizer, arch


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def adapted(request, bases, tmp_path_factory):
    model_type, variant = request.param
    out = tmp_path_factory.mktemp(f"adapter-{model_type}-{variant}")
    adapter = to_float64(build_adapter(bases[model_type], out, use_dora=variant == "dora",
                                       use_rslora=variant == "rslora", seed=5))
    model, tokenizer, arch = load_double(bases[model_type], adapter)
    prepared = prepare(tokenizer, arch)
    return {"base": bases[model_type], "adapter": adapter, "model": model, "arch": arch,
            "prepared": prepared, "variant": variant,
            "full": as_tensor(prepared.score(model, progress=False))}


def _every(model, arch) -> set:
    from lorascope.core.switching import lora_modules

    return set(lora_modules(model, arch))


def test_truncation_at_full_rank_reproduces_scores(adapted) -> None:
    from lorascope.core.switching import truncated

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    with truncated(model, arch, _every(model, arch), 4) as energy:
        rebuilt = as_tensor(prepared.score(model, progress=False))
    assert set(energy) == _every(model, arch)
    assert all(e == pytest.approx(1.0) for e in energy.values())
    assert (rebuilt - adapted["full"]).abs().max() <= 1e-5


@pytest.mark.parametrize("rank", [1, 2])
def test_in_place_truncation_equals_exported_adapter(adapted, rank, tmp_path) -> None:
    """In-place rank-k truncation == export_compressed(..., k) loaded with plain peft."""
    from lorascope.core.switching import truncated

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    with truncated(model, arch, _every(model, arch), rank) as energy:
        in_place = as_tensor(prepared.score(model, progress=False))
    assert (in_place - adapted["full"]).abs().max() > 1e-4, "truncation changed nothing"
    out = tmp_path / f"r{rank}"
    manifest = export_compressed(adapted["adapter"], out, rank)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == rank
    exported, _, _ = load_double(adapted["base"], out)  # PeftModel.from_pretrained
    scores = as_tensor(prepared.score(exported, progress=False))
    assert (scores - in_place).abs().max() <= 1e-5
    assert all(0.0 < e < 1.0 for e in energy.values())
    kept = manifest["compression"]["energy_kept"]
    table = {roles.parse_module_name(arch, name): value for name, value in kept.items()}
    assert table.keys() == energy.keys()
    for key, value in energy.items():
        assert table[key] == pytest.approx(value, rel=1e-9)


def test_restoration_is_bitwise(adapted) -> None:
    import torch

    from lorascope.core.switching import truncated

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    before = model_state(model)
    for rank in (1, 3):
        with truncated(model, arch, _every(model, arch), rank):
            prepared.score(model, progress=False)
    assert_same_state(before, model_state(model))
    assert torch.equal(as_tensor(prepared.score(model, progress=False)), adapted["full"])


def test_restored_on_exception_and_subset(bases, tmp_path) -> None:
    import torch

    from lorascope.core.switching import lora_modules, truncated

    adapter = build_adapter(bases["llama"], tmp_path / "a")
    model, _, arch = load_adapted(bases["llama"], adapter)
    before = model_state(model)
    table = lora_modules(model, arch)
    chosen = {(0, "q"), (2, "down")}
    with pytest.raises(RuntimeError, match="boom"), truncated(model, arch, chosen, 1):
        for key, layer in table.items():
            a = layer.lora_A["default"].weight
            changed = not torch.equal(a, before["weights"][_state_key(model, layer, "lora_A")])
            assert changed == (key in chosen), key
            if key in chosen:
                assert not a[1:].any()
        raise RuntimeError("boom")
    assert_same_state(before, model_state(model))


def _state_key(model, layer, part: str) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return f"{name}.{part}.default.weight"
    raise AssertionError("layer not in model")


def test_truncation_errors(bases, tmp_path) -> None:
    from lorascope.core.switching import SwitchingError, lora_modules, truncated

    adapter = build_adapter(bases["gpt_neox"], tmp_path / "mlp", targets="mlp")
    model, _, arch = load_adapted(bases["gpt_neox"], adapter)
    with pytest.raises(SwitchingError, match="no LoRA on layer 0 qkv"), \
            truncated(model, arch, {(0, "qkv")}, 1):
        pass
    with pytest.raises(SwitchingError, match="positive int"), truncated(model, arch, set(), 0):
        pass
    lora_modules(model, arch)[(0, "up")].merge()
    with pytest.raises(SwitchingError, match="merged"), truncated(model, arch, {(0, "up")}, 1):
        pass


# --------------------------------------------------------------------------- export


def test_export_keeps_head_and_records_source(bases, tmp_path) -> None:
    import torch

    adapter = build_adapter(bases["bert"], tmp_path / "src", use_rslora=True)
    (adapter / "manifest.json").write_text(json.dumps({
        "files": {"adapter_model.safetensors": "x" * 64, "adapter_config.json": "y" * 64},
        "base_model": {"source": "tiny", "weights_sha256": "z" * 64, "model_type": "bert"},
        "step": 7}))
    out = tmp_path / "r2"
    manifest = export_compressed(adapter, out, 2, params={"rank": 2, "adapter": "r4-all"})
    source, compressed = read_adapter(adapter), read_adapter(out)
    assert compressed.config["r"] == 2 and compressed.config["use_rslora"]
    assert compressed.config["lora_alpha"] == pytest.approx(8 / math.sqrt(4) * math.sqrt(2))
    assert compressed.config["alpha_pattern"] == {}
    lora_keys = {k for k in source.tensors if ".lora_" in k}
    others = set(source.tensors) - lora_keys
    assert any("classifier" in k for k in others) and any("pooler" in k for k in others)
    for key in others:  # trained head and pooler copied unchanged
        assert torch.equal(compressed.tensors[key], source.tensors[key]), key
    assert all(m.rank == 2 for m in compressed.modules)
    assert [m.scaling for m in compressed.modules] == [m.scaling for m in source.modules]
    info = manifest["compression"]
    assert info["rank"] == {"from": 4, "to": 2}
    assert info["source"]["files"] == {"adapter_model.safetensors": "x" * 64,
                                       "adapter_config.json": "y" * 64}
    assert info["lora_params"]["to"] * 2 == info["lora_params"]["from"]
    assert 0 < info["energy_kept_min"] <= info["energy_kept_mean"] < 1
    assert manifest["base_model"]["model_type"] == "bert" and manifest["step"] == 7
    assert manifest["params"] == {"rank": 2, "adapter": "r4-all"}
    on_disk = json.loads((out / "manifest.json").read_text())
    for name, digest in on_disk["files"].items():
        assert fileio.sha256_file(out / name) == digest


def test_export_of_a_bare_checkpoint_hashes_its_files(bases, tmp_path) -> None:
    adapter = build_adapter(bases["llama"], tmp_path / "src")
    manifest = export_compressed(adapter, tmp_path / "r1", 1)
    assert manifest["compression"]["source"]["files"] == {
        name: fileio.sha256_file(adapter / name)
        for name in ("adapter_model.safetensors", "adapter_config.json")}
    assert manifest["base_model"] is None
    assert adapter_rank(adapter) == 4 and adapter_rank(tmp_path / "r1") == 1


def test_export_refusals(bases, tmp_path) -> None:
    adapter = build_adapter(bases["llama"], tmp_path / "src")
    with pytest.raises(FactorError, match="rank-4 adapter to rank 5"):
        export_compressed(adapter, tmp_path / "x", 5)
    with pytest.raises(FactorError, match="positive int"):
        export_compressed(adapter, tmp_path / "x", 0)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "init_lora_weights": "pissa_niter_4"}))
    with pytest.raises(FactorError, match="adapter_config.json: init_lora_weights="
                                               "'pissa_niter_4' rewrites the base weights"):
        export_compressed(adapter, tmp_path / "x", 2)
    config_file.write_text(json.dumps({**config, "lora_bias": True}))
    with pytest.raises(FactorError, match="lora_bias"):
        export_compressed(adapter, tmp_path / "x", 2)
    assert not (tmp_path / "x").exists()
    with pytest.raises(FactorError, match="no such file"):
        read_adapter(tmp_path)
