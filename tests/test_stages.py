"""Model stages end to end on a tiny model: training published, adapters extracted with a
manifest that reproduces training-time scores, and adapters refused on the wrong base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorascope.core import adapters
from lorascope.extraction import extract_adapter
from lorascope.evaluate import evaluate, trained_modules
from lorascope.models.stage import passage_texts
from lorascope.training.stage import train_lora
from lorascope.core import fileio
from lorascope.core.adapters import AdapterMismatch
from lorascope.data.prepare import prepare_train
from lorascope.models.base import BaseModelSpec, prepare_base

TRAIN = {"source": "embedded", "dataset": "dl21", "group_size": 4, "min_relevance": 2,
         "negatives": "scoreddocs", "negatives_depth": 100, "max_queries": 6}
SETTINGS = {"rank": 4, "targets": "all", "steps": [1, 2], "alpha": 8, "dropout": 0.1,
            "use_rslora": False, "use_dora": False, "lr": 0.01, "schedule": "constant",
            "decay_steps": None, "warmup_steps": 0, "queries_per_step": 2,
            "micro_batch_queries": 2, "group_size": None, "max_length": 48,
            "weight_decay": 0.0, "precision": "fp32", "gradient_checkpointing": False,
            "quantize_4bit": False, "seed": 3}


def _base(root: Path, groups: Path, seed: int) -> Path:
    spec = BaseModelSpec("tiny", architecture="llama", layers=2, width=32, heads=2,
                         vocab_size=500, pretrain_steps=2, pretrain_seq_len=32, seed=seed)
    out = root / f"base-{seed}"
    prepare_base(spec, out, lambda: passage_texts(groups), progress=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    groups = root / "train_groups.parquet"
    prepare_train({"train": TRAIN, "seed": 1, "holdout_queries": []}, groups)
    base = _base(root, groups, seed=1)
    params = {"model": "tiny", "adapter": "r4-all", "settings": SETTINGS}
    train_lora(params, base, groups, root / "work", root / "train")
    return {"root": root, "groups": groups, "base": base, "train": root / "train", "params": params}


def test_training_published_without_state(run):
    published = {p.name for p in run["train"].iterdir()}
    assert {"step-1", "step-2", "train_log.csv", "provenance.json"} <= published
    assert "state" not in published
    assert (run["root"] / "work" / "state").is_dir()  # kept for resuming


def test_extracted_adapter_reproduces_training_scores(run, tmp_path):
    import torch
    from peft import PeftModel

    from lorascope.models.reranker import encode_pairs, load_reranker, score_logits

    out = tmp_path / "adapter"
    manifest = extract_adapter({**run["params"], "step": 2}, run["train"], run["base"], out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    for name, digest in manifest["files"].items():
        assert fileio.sha256_file(out / name) == digest
    rows = (run["train"] / "train_log.csv").read_text().splitlines()
    assert manifest["train_loss"] == pytest.approx(float(rows[2].split(",")[1]))
    assert manifest["step"] == 2 and manifest["params"]["settings"]["rank"] == 4
    assert manifest["base_model"]["weights_sha256"] and manifest["versions"]["peft"]

    # a plain peft user: base + PeftModel.from_pretrained on the extracted folder
    base, tokenizer, arch = load_reranker(run["base"])
    model = PeftModel.from_pretrained(base, str(out)).eval()
    probe = manifest["probe"]
    batch = encode_pairs(tokenizer, arch, [probe["query"]] * len(probe["passages"]), probe["passages"], 48)
    with torch.no_grad():
        scores = score_logits(model(**batch).logits).float().tolist()
    assert scores == pytest.approx(probe["scores"], abs=1e-6)


def test_adapter_refused_on_another_base(run, tmp_path):
    out = tmp_path / "adapter"
    extract_adapter({**run["params"], "step": 1}, run["train"], run["base"], out)
    assert adapters.verify(out, run["base"])["step"] == 1
    other = _base(tmp_path, run["groups"], seed=2)
    with pytest.raises(AdapterMismatch, match=rf"adapter {out} was trained on base model .* not on .* in {other}"):
        adapters.verify(out, other)
    with pytest.raises(AdapterMismatch, match="base-2"):
        evaluate({"sweep": "checkpoints", "sweep_spec": {"ablations": {}}}, other, out,
                        tmp_path, tmp_path / "s", tmp_path / "m", tmp_path / "j")
    config = out / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 4', '"r": 5'))
    with pytest.raises(AdapterMismatch, match="adapter_config.json changed since extraction"):
        adapters.verify(out, run["base"])


def test_missing_checkpoint_is_named(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
        extract_adapter({**run["params"], "step": 7}, run["train"], run["base"], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_trained_modules_read_from_adapter_config(run, tmp_path):
    from lorascope.core.roles import roles_for

    out = tmp_path / "adapter"
    extract_adapter({**run["params"], "step": 1}, run["train"], run["base"], out)
    found = trained_modules(out, roles_for("llama"))
    assert found == {(layer, role) for layer in range(2) for role in ("q", "k", "v", "o", "gate", "up", "down")}
    assert json.loads((out / "manifest.json").read_text())["base_model"]["model_type"] == "llama"
