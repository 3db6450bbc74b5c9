"""LoRA update anatomy: norms, spectra and effective rank from the r×r factorisation against a
dense numpy computation; module naming on tiny LLaMA / GPT-NeoX / BERT adapters; the stage's
Parquet table; the correlation with a per-(layer, role) sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from helpers import build_adapter

from lorascope.core import roles
from lorascope.analyses.anatomy import ANATOMY
from lorascope.analyses.anatomy.correlation import (
    correlate,
    correlate_with_sweep,
    drops_from_summary,
)
from lorascope.analyses.anatomy.maths import (
    AnatomyError,
    adapter_anatomy,
    effective_rank,
    module_anatomy,
)
from lorascope.analyses.anatomy.stage import anatomy
from lorascope.core.contracts import read_provenance, read_table


def dense_reference(delta: np.ndarray, r: int) -> dict:
    """What the anatomy must equal, computed on the dense d_out×d_in update."""
    sigma = np.linalg.svd(delta, compute_uv=False)[:r]
    p = sigma / sigma.sum()
    p = p[p > 0]
    return {"fro": np.linalg.norm(delta, "fro"), "spectral": np.linalg.norm(delta, 2),
            "effective_rank": float(np.exp(-(p * np.log(p)).sum())), "sigma": sigma}


@pytest.mark.parametrize("r, d_in, d_out, scaling", [(4, 24, 16, 2.0), (8, 12, 40, -0.5),
                                                     (6, 10, 3, 8 / math.sqrt(6))])
def test_module_anatomy_equals_dense(r, d_in, d_out, scaling) -> None:
    import torch

    g = torch.Generator().manual_seed(r)
    a = torch.randn(r, d_in, generator=g)
    b = torch.randn(d_out, r, generator=g)
    got = module_anatomy(a, b, scaling, layer=1, role="q", module="m")
    delta = scaling * (b.double().numpy() @ a.double().numpy())
    want = dense_reference(delta, r)
    assert got.fro == pytest.approx(want["fro"], rel=1e-5)
    assert got.spectral == pytest.approx(want["spectral"], rel=1e-5)
    assert got.effective_rank == pytest.approx(want["effective_rank"], rel=1e-5)
    assert len(got.sigma) == r
    k = min(r, d_in, d_out)
    np.testing.assert_allclose(got.sigma[:k], want["sigma"][:k], rtol=1e-5)
    assert all(s == 0.0 for s in got.sigma[k:])  # zero-padded to r
    assert got.stable_rank == pytest.approx(want["fro"] ** 2 / want["spectral"] ** 2, rel=1e-5)
    assert (got.rank, got.d_in, got.d_out, got.params) == (r, d_in, d_out, r * (d_in + d_out))
    assert got.magnitude_norm is None and got.magnitude_shift is None


def test_effective_rank_definition() -> None:
    assert effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_rank([2.0] * 5) == pytest.approx(5.0)
    assert effective_rank([0.0, 0.0]) == 0.0
    assert 1.0 < effective_rank([4.0, 1.0]) < 2.0
    assert effective_rank([4.0, 1.0]) == pytest.approx(effective_rank([40.0, 10.0]))


# --------------------------------------------------------------------------- adapters


def _dense_from_file(adapter_dir: Path) -> dict[str, np.ndarray]:
    """``s·B·A`` per module straight from the safetensors and the config: the reference."""
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            prefix = key.removesuffix(".lora_A.weight")
            b = tensors[f"{prefix}.lora_B.weight"]
            r = a.shape[0]
            s = config["lora_alpha"] / (math.sqrt(r) if config["use_rslora"] else r)
            out[prefix.removeprefix("base_model.model.")] = s * (b.astype(np.float64)
                                                                 @ a.astype(np.float64))
    return out


NAMES = {
    "llama": {(0, "q"): "model.layers.0.self_attn.q_proj", (2, "gate"): "model.layers.2.mlp.gate_proj"},
    "gpt_neox": {(0, "qkv"): "gpt_neox.layers.0.attention.query_key_value",
                 (1, "o"): "gpt_neox.layers.1.attention.dense",
                 (2, "up"): "gpt_neox.layers.2.mlp.dense_h_to_4h"},
    "bert": {(0, "o"): "bert.encoder.layer.0.attention.output.dense",
             (1, "down"): "bert.encoder.layer.1.output.dense",
             (2, "up"): "bert.encoder.layer.2.intermediate.dense"},
}


@pytest.mark.parametrize("model_type, variant", [("llama", "lora"), ("llama", "rslora"),
                                                 ("gpt_neox", "lora"), ("bert", "dora")])
def test_adapter_anatomy_on_tiny_adapters(bases, tmp_path, model_type, variant) -> None:
    adapter = build_adapter(bases[model_type], tmp_path / "a", use_dora=variant == "dora",
                            use_rslora=variant == "rslora", seed=3)
    arch = roles.roles_for(model_type)
    rows = adapter_anatomy(adapter)  # architecture inferred from the module names
    assert [(m.layer, m.role) for m in rows] == [(layer, role) for layer in range(3)
                                                 for role in arch.roles]
    by_key = {(m.layer, m.role): m for m in rows}
    for key, name in NAMES[model_type].items():
        assert by_key[key].module == name
    if model_type == "gpt_neox":  # the fused projection is one module: d_out = 3 x width
        assert (by_key[(0, "qkv")].d_in, by_key[(0, "qkv")].d_out) == (32, 96)
    dense = _dense_from_file(adapter)
    for m in rows:
        want = dense_reference(dense[m.module], m.rank)
        assert m.fro == pytest.approx(want["fro"], rel=1e-5)
        assert m.spectral == pytest.approx(want["spectral"], rel=1e-5)
        assert m.effective_rank == pytest.approx(want["effective_rank"], rel=1e-5)
        np.testing.assert_allclose(m.sigma, want["sigma"], rtol=1e-5)
        expected = 8 / (math.sqrt(4) if variant == "rslora" else 4)
        assert m.scaling == pytest.approx(expected)
        assert (m.magnitude_norm is not None) == (variant == "dora")
        assert m.params == 4 * (m.d_in + m.d_out) + (m.d_out if variant == "dora" else 0)


def test_dora_magnitude_shift_needs_the_base(bases, tmp_path) -> None:
    """With the base model, the shift is ‖m − ‖W‖_row‖ / ‖‖W‖_row‖ (here m = (1 + u)·‖W‖)."""
    from safetensors.torch import load_file

    adapter = build_adapter(bases["bert"], tmp_path / "d", use_dora=True, seed=4)
    without = adapter_anatomy(adapter)
    assert all(m.magnitude_shift is None for m in without)
    rows = adapter_anatomy(adapter, base_dir=bases["bert"])
    base = load_file(str(bases["bert"] / "model.safetensors"))
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    for m in rows:
        w = base[m.module.removeprefix("bert.") + ".weight"].double().norm(dim=1)
        mag = tensors[f"base_model.model.{m.module}.lora_magnitude_vector"].double()
        assert m.magnitude_norm == pytest.approx(float(mag.norm()), rel=1e-9)
        assert m.magnitude_shift == pytest.approx(float((mag - w).norm() / w.norm()), rel=1e-9)
        assert 0.0 < m.magnitude_shift < 0.3


def test_unknown_modules_are_an_error(bases, tmp_path) -> None:
    adapter = build_adapter(bases["gpt_neox"], tmp_path / "n", targets="mlp")
    with pytest.raises(AnatomyError, match="no role of architecture 'llama'"):
        adapter_anatomy(adapter, model_type="llama")


# --------------------------------------------------------------------------- stage


def test_anatomy_stage_writes_the_contract(bases, tmp_path) -> None:
    steps = {5: build_adapter(bases["llama"], tmp_path / "s5", seed=1),
             10: build_adapter(bases["llama"], tmp_path / "s10", seed=2)}
    out = tmp_path / "anatomy.parquet"
    result = anatomy({"model": "tiny", "adapter": "r4-all"}, steps, out, progress=False)
    table = read_table(out, ANATOMY)
    rows = table.to_pylist()
    assert len(rows) == result["rows"] == 2 * 3 * 7
    assert {r["step"] for r in rows} == {5, 10} and result["steps"] == [5, 10]
    assert {(r["model"], r["adapter"]) for r in rows} == {("tiny", "r4-all")}
    first = adapter_anatomy(steps[5])[0]
    row = next(r for r in rows if r["step"] == 5 and (r["layer"], r["role"]) == (0, "q"))
    assert row["fro"] == first.fro and row["sigma"] == list(first.sigma)
    assert row["magnitude_norm"] is None
    total = math.sqrt(sum(r["fro"] ** 2 for r in rows if r["step"] == 10))
    assert result["fro_total"][10] == pytest.approx(total)
    assert read_provenance(out)["stage"] == "anatomy"
    with pytest.raises(AnatomyError, match="'model' must be a string"):
        anatomy({"adapter": "x"}, steps, tmp_path / "x.parquet")


# --------------------------------------------------------------------------- correlation


def _summary(drops: dict, **fields) -> dict:
    entries = {"full": {"delta": {"nDCG@10": 0.0}}}
    for (layer, role), drop in drops.items():
        entries[f"drop_layer_{layer:02d}_{role}"] = {"delta": {"nDCG@10": -drop}}
    entries["no_lora"] = {"delta": {"nDCG@10": -0.5}}  # not a per-(layer, role) entry
    return {"ablations": entries, **fields}


def test_correlation_with_sweep_drops(bases, tmp_path) -> None:
    adapter = build_adapter(bases["gpt_neox"], tmp_path / "a", seed=6)
    out = tmp_path / "anatomy.parquet"
    anatomy({"model": "neox", "adapter": "r4-all"}, {20: adapter}, out, progress=False)
    fro = {(m.layer, m.role): m.fro for m in adapter_anatomy(adapter)}
    monotone = {k: 0.01 * v**2 for k, v in fro.items()}  # same order as fro
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(_summary(monotone, model="neox", adapter="r4-all", step=20)))
    result = correlate_with_sweep(out, path)
    assert result.rho == pytest.approx(1.0) and result.n == len(fro) == 12
    assert result.p_value < 1e-3 and result.quantity == "fro"
    reverse = {k: -v for k, v in monotone.items()}
    path.write_text(json.dumps(_summary(reverse, model="neox", adapter="r4-all", step=20)))
    assert correlate_with_sweep(out, path).rho == pytest.approx(-1.0)
    path.write_text(json.dumps(_summary(monotone, model="neox", adapter="r4-all", step=30)))
    with pytest.raises(AnatomyError, match="no rows for model 'neox', adapter 'r4-all', step 30"):
        correlate_with_sweep(out, path)


def test_drops_and_small_samples() -> None:
    drops = drops_from_summary(_summary({(3, "qkv"): 0.25, (0, "up"): -0.1}), "nDCG@10")
    assert drops == {(3, "qkv"): 0.25, (0, "up"): -0.1}
    with pytest.raises(AnatomyError, match="x.json: no drop_layer_<i>_<role> ablations"):
        drops_from_summary({"ablations": {"full": {}}}, "nDCG@10", "x.json")
    with pytest.raises(AnatomyError, match="has no delta for 'AP'"):
        drops_from_summary(_summary({(0, "q"): 0.1}), "AP")
    small = correlate({(0, "q"): 1.0, (1, "q"): 2.0}, {(0, "q"): 0.1, (1, "q"): 0.2})
    assert small.n == 2 and math.isnan(small.rho) and math.isnan(small.p_value)
    flat = correlate({(i, "q"): 1.0 for i in range(4)}, {(i, "q"): float(i) for i in range(4)})
    assert flat.n == 4 and math.isnan(flat.rho)
