"""LoRA variants end to end on tiny models: trained through peft, extracted, loaded by plain
``PeftModel.from_pretrained`` onto the original base, and reproducing training-time scores.

Plain LoRA, DoRA, rsLoRA and EVA are extracted unchanged and reproduce the probe bitwise.
PiSSA and OLoRA train on a rewritten base (W_res = W - s B0 A0) and are extracted as the delta
``s (B A - B0 A0)`` of rank 2r on the original W: equal in exact arithmetic, so the probe is
reproduced to float32 rounding (measured <= 1.2e-7 on these models; asserted within 1e-5).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import assert_bitwise_equal, build_base, passages, toy_groups

from lorascope.core import adapters
from lorascope.extraction import converted_config, delta_from_initial, extract_adapter
from lorascope.core import contracts, variants
from lorascope.models.base import BaseModelSpec, prepare_base
from lorascope.training.settings import TrainSettings
from lorascope.training.loop import checkpoint_dir, initial_dir, train

CONVERSION_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def groups_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train_groups.parquet"
    contracts.write_table(path, toy_groups(24), contracts.TRAIN_GROUPS)
    return path


def _tiny(root: Path, architecture: str) -> Path:
    texts = passages(500, low=12, high=30)
    out = root / f"tiny-{architecture}"
    spec = BaseModelSpec("tiny", architecture=architecture, layers=2, width=32, heads=4,
                         vocab_size=300, pretrain_steps=5, pretrain_lr=3e-3,
                         pretrain_batch_size=8, pretrain_seq_len=64)
    prepare_base(spec, out, lambda: texts, progress=False)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Tiny LLaMA and BERT base directories (with base_manifest.json)."""

    root = tmp_path_factory.mktemp("bases")
    bert_src = build_base(root / "bert-src", "bert", layers=2)
    bert = root / "bert"
    prepare_base(BaseModelSpec("local", path=str(bert_src)), bert)
    return {"llama": _tiny(root, "llama"), "bert": bert}


def settings(variant: tuple[str, ...], **overrides) -> TrainSettings:
    """A short run on the CPU in fp32 (where the probe is re-scored: bitwise comparisons)."""
    fields = {"rank": 4, "steps": (2,), "lr": 3e-3, "queries_per_step": 4,
              "micro_batch_queries": 2, "max_length": 48, "seed": 3, "device": "cpu",
              "precision": "fp32"}
    return TrainSettings(**{**fields, **variants.train_fields(variant), **overrides})


def probe_scores(base_dir: Path, adapter_dir: Path, probe: dict) -> tuple[list[float], dict]:
    """Scores of the probe group with ``adapter_dir`` loaded by plain peft onto ``base_dir``,
    and which LoRA-wrapped base weights differ from the base model's own."""
    import torch
    from peft import PeftModel

    from lorascope.models.reranker import encode_pairs, load_reranker, score_logits

    torch.manual_seed(0)
    base, tokenizer, arch = load_reranker(base_dir)
    original = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    batch = encode_pairs(tokenizer, arch, [probe["query"]] * len(probe["passages"]),
                         probe["passages"], 48)
    with torch.no_grad():
        scores = score_logits(model(**batch).logits).float().tolist()
    changed = {}
    for name, p in model.named_parameters():
        if name.endswith(".base_layer.weight"):
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
            changed[plain] = not torch.equal(p, original[plain])
    return scores, changed


VARIANTS = [("llama", v) for v in ((), ("dora",), ("rslora",), ("pissa",), ("olora",), ("eva",),
                                   ("dora", "pissa"), ("olora", "rslora"), ("dora", "eva"))]
VARIANTS += [("bert", ("pissa",)), ("bert", ("eva",))]


@pytest.mark.parametrize("arch,variant", VARIANTS,
                         ids=[f"{a}-{'_'.join(v) or 'lora'}" for a, v in VARIANTS])
def test_extracted_variant_loads_on_original_base_and_reproduces_probe(
    bases, groups_path, tmp_path, arch, variant
) -> None:
    base = bases[arch]
    run = settings(variant)
    train(base, groups_path, run, tmp_path / "train", progress=False)
    saved = checkpoint_dir(tmp_path / "train", 2)
    checkpoint = json.loads((saved / "adapter_config.json").read_text())
    assert checkpoint["use_dora"] == ("dora" in variant)
    assert checkpoint["use_rslora"] == ("rslora" in variant)
    assert checkpoint["init_lora_weights"] == variants.peft_init(variants.init_of(variant))

    out = tmp_path / "adapter"
    params = {"step": 2, "settings": run.to_dict()}
    manifest = extract_adapter(params, tmp_path / "train", base, out)
    assert manifest["variant"]["names"] == list(variant)
    assert manifest["variant"]["peft"]["r"] == 4
    scores, changed = probe_scores(base, out, manifest["probe"])
    assert changed and not any(changed.values())  # the original base, untouched by loading
    converted = manifest["variant"]["converted"]
    config = json.loads((out / "adapter_config.json").read_text())
    if variants.rewrites_base(variants.init_of(variant)):
        assert converted["rank"] == manifest["rank"] == config["r"] == 8
        assert config["init_lora_weights"] is True
        assert (tmp_path / "train" / "initial" / "adapter_model.safetensors").is_file()
        assert scores == pytest.approx(manifest["probe"]["scores"], abs=CONVERSION_TOLERANCE)
        # the unconverted checkpoint would re-run the initialisation on load: base rewritten
        _, raw_changed = probe_scores(base, saved, manifest["probe"])
        assert all(raw_changed.values())
    else:
        assert converted is None and manifest["rank"] == config["r"] == 4
        assert not (tmp_path / "train" / "initial").exists()
        assert scores == manifest["probe"]["scores"]  # bitwise


def test_variant_settings_reach_peft(bases, groups_path, tmp_path) -> None:
    """Each initialisation gives the step-0 adapter peft documents (and different runs)."""
    import torch
    from safetensors.torch import load_file

    base = bases["llama"]
    runs = {}
    for variant in ((), ("pissa",), ("eva",)):
        out = tmp_path / ("_".join(variant) or "lora")
        train(base, groups_path, settings(variant, steps=(1,)), out, progress=False)
        runs[variant] = load_file(str(checkpoint_dir(out, 1) / "adapter_model.safetensors"))
    key = next(k for k in runs[()] if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    assert not torch.equal(runs[()][key], runs[("pissa",)][key])
    assert not torch.equal(runs[()][key], runs[("eva",)][key])
    # EVA's A: principal directions of the layer inputs, orthonormal rows (seen after one
    # step at a learning rate too small to move them)
    train(base, groups_path, settings(("eva",), steps=(1,), lr=1e-9), tmp_path / "eva0",
          progress=False)
    a = load_file(str(checkpoint_dir(tmp_path / "eva0", 1) / "adapter_model.safetensors"))[key]
    torch.testing.assert_close(a @ a.T, torch.eye(4), atol=1e-5, rtol=0)
    # PiSSA's initial adapter: B0 A0 * s is the top-4 singular part of the original weight
    initial = load_file(str(tmp_path / "pissa" / "initial" / "adapter_model.safetensors"))
    from lorascope.models.reranker import load_reranker

    model, _, _ = load_reranker(base)
    weight = model.model.layers[0].self_attn.q_proj.weight.detach()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    top = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    a0 = initial[key]
    b0 = initial[key.replace("lora_A", "lora_B")]
    scale = 64.0 / 4
    torch.testing.assert_close(scale * b0 @ a0, top, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", [("pissa",), ("eva",), ("dora", "olora")],
                         ids=["pissa", "eva", "dora_olora"])
def test_variant_resume_ends_with_the_uninterrupted_adapter(
    bases, groups_path, tmp_path, variant
) -> None:
    base = bases["llama"]
    run = settings(variant, steps=(2, 4, 6), schedule="linear")
    train(base, groups_path, run, tmp_path / "whole", progress=False)
    cut = tmp_path / "cut"
    partial = train(base, groups_path, run, cut, progress=False, stop_after=3)
    assert not partial["complete"]
    if variants.rewrites_base(variants.init_of(variant)):
        # the initial adapter survives the interruption; if lost, the resume rebuilds it
        import shutil

        shutil.rmtree(initial_dir(cut))
    train(base, groups_path, run, cut, progress=False)
    for step in run.steps:
        assert_bitwise_equal(_tensors(checkpoint_dir(tmp_path / "whole", step)),
                             _tensors(checkpoint_dir(cut, step)))
    if variants.rewrites_base(variants.init_of(variant)):
        assert_bitwise_equal(_tensors(initial_dir(tmp_path / "whole")), _tensors(initial_dir(cut)))


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_conversion_matches_peft_and_keeps_head_and_magnitudes(bases, tmp_path) -> None:
    """Our tensor-level conversion equals peft's own for lora_A/lora_B, and keeps the score
    head and DoRA magnitudes that peft's drops."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors.torch import load_file

    from lorascope.core import roles
    from lorascope.models.reranker import load_reranker

    torch.manual_seed(0)
    model, _, arch = load_reranker(bases["llama"])
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, use_dora=True,
                        init_lora_weights="pissa", modules_to_save=list(arch.head_modules),
                        target_modules=roles.target_modules(arch, arch.roles, num_layers=2))
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(tmp_path / "initial")
    initial = load_file(str(tmp_path / "initial" / "adapter_model.safetensors"))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape) * 0.05)
    peft_model.save_pretrained(tmp_path / "trained")
    trained = load_file(str(tmp_path / "trained" / "adapter_model.safetensors"))
    peft_model.save_pretrained(tmp_path / "peft",
                               path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    theirs = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))

    ours = delta_from_initial(trained, initial)
    assert set(theirs) < set(ours) == set(trained)
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    kept = set(ours) - set(theirs)
    assert any("score" in k for k in kept) and any("lora_magnitude_vector" in k for k in kept)
    for key in kept:
        assert torch.equal(ours[key], trained[key])
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    converted = converted_config(
        json.loads((tmp_path / "trained" / "adapter_config.json").read_text()))
    for field in ("r", "lora_alpha", "init_lora_weights"):
        assert converted[field] == peft_config[field], field


def test_published_pissa_run_extracts_through_the_stages(bases, groups_path, tmp_path) -> None:
    """The train_lora stage publishes the initial adapter beside the checkpoints (not the
    state), and extraction from the published directory converts the checkpoint."""
    from lorascope.training.stage import train_lora

    run = settings(("pissa", "rslora"), steps=(1, 2))
    params = {"model": "tiny", "adapter": "r4-all-pissa_rslora", "settings": run.to_dict()}
    train_lora(params, bases["llama"], groups_path, tmp_path / "work", tmp_path / "train")
    published = {p.name for p in (tmp_path / "train").iterdir()}
    assert {"initial", "step-1", "step-2"} <= published and "state" not in published
    manifest = extract_adapter({**params, "step": 1}, tmp_path / "train", bases["llama"],
                                tmp_path / "adapter")
    assert manifest["variant"]["names"] == ["pissa", "rslora"]
    assert manifest["variant"]["converted"]["lora_alpha"] == pytest.approx(64 * 2**0.5)
    assert adapters.verify(tmp_path / "adapter", bases["llama"])["rank"] == 8
    scores, _ = probe_scores(bases["llama"], tmp_path / "adapter", manifest["probe"])
    assert scores == pytest.approx(manifest["probe"]["scores"], abs=CONVERSION_TOLERANCE)


def test_extraction_names_a_missing_initial_adapter(bases, groups_path, tmp_path) -> None:
    import shutil

    run = settings(("olora",), steps=(1,))
    train(bases["llama"], groups_path, run, tmp_path / "train", progress=False)
    shutil.rmtree(tmp_path / "train" / "initial")
    with pytest.raises(FileNotFoundError, match=r"initial/adapter_model.safetensors: the initial"):
        extract_adapter({"step": 1}, tmp_path / "train", bases["llama"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_variant_names_and_combinations() -> None:
    assert variants.canonical(None) == variants.canonical("lora") == ()
    assert variants.canonical(["lora"]) == ()
    assert variants.canonical(["rslora", "dora"]) == ("dora", "rslora")
    assert variants.label(variants.canonical(["rslora", "dora"])) == "dora_rslora"
    assert variants.canonical(["pissa", "dora", "rslora"]) == ("dora", "pissa", "rslora")
    fields = variants.train_fields(("dora", "eva"))
    assert fields == {"use_dora": True, "use_rslora": False, "init": "eva"}
    assert variants.train_fields(("rslora",)) == {"use_dora": False, "use_rslora": True}
    assert variants.from_flags(dora=True, rslora=False) == ("dora",)
    for bad, message in (
        (["pissa", "eva"], "pissa and eva are alternative initialisations"),
        (["lora", "dora"], "'lora' is plain LoRA"),
        (["dora", "dora"], "listed twice"),
        ("qlora", "unknown variant 'qlora'"),
        ([], "empty variant list"),
    ):
        with pytest.raises(variants.VariantError, match=message):
            variants.canonical(bad)


def test_settings_refuse_unknown_init_and_mutating_init_on_4bit() -> None:
    with pytest.raises(ValueError, match="init must be default or one of"):
        settings((), init="loftq")
    with pytest.raises(ValueError, match="rewrites the base weights"):
        settings(("pissa",), quantize_4bit=True)
    assert settings(("eva",)).to_dict()["init"] == "eva"
    assert dataclasses.replace(settings(()), init="olora").init == "olora"
