"""Adapters trained elsewhere (``models.<m>.imported``): a LoRA adapter trained here with plain
peft + transformers on a tiny BERT (the MiniLM family), imported onto the prepared base.

The import must keep the adapter bit for bit, record where it came from, and score exactly
as plain peft loading does; adapters that do not fit the base are refused naming the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import build_base, toy_pairs, train_plain_peft
from small_study import small_study

from lorascope.core.adapters import AdapterMismatch
from lorascope.core.foreign import inspect_adapter
from lorascope.study.parse import load_study
from lorascope.study.spec import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("imported")
    base = build_base(root / "base", "bert")
    return {"root": root, "base": base,
            "adapter": train_plain_peft(base, root / "external"),
            "config": json.loads((base / "config.json").read_text())}


def test_inspect_reads_rank_roles_and_head(bert) -> None:
    info = inspect_adapter(bert["adapter"], bert["config"])
    assert info.rank == 2 and info.roles == ("q", "v", "up") and info.targets_name == "q_v_up"
    assert info.head == ("classifier",) and info.variant == ()
    assert sorted(info.modules) == [(layer, role) for layer in range(3)
                                    for role in ("q", "up", "v")]


def test_adapters_that_do_not_fit_are_refused(bert, tmp_path) -> None:
    llama = build_base(tmp_path / "llama", "llama")
    from helpers import build_adapter

    for_llama = build_adapter(llama, tmp_path / "for-llama")
    cases = [
        (for_llama, "maps to no role of bert"),
        (bert["base"], "is a full model (config.json, model.safetensors), not a peft adapter"),
        (train_plain_peft(bert["base"], tmp_path / "pooler", targets=("pooler.dense",)),
         "LoRA module 'base_model.model.bert.pooler.dense' maps to no role of bert"),
        (train_plain_peft(build_base(tmp_path / "wide", "bert", width=64), tmp_path / "wide-ad"),
         "takes inputs of width 64; the base model's q takes 32"),
    ]
    shallow = dict(bert["config"], num_hidden_layers=2)
    with pytest.raises(AdapterMismatch, match="is in layer 2; the base model has 2 layers"):
        inspect_adapter(bert["adapter"], shallow)
    for adapter, says in cases:
        with pytest.raises(AdapterMismatch, match=None) as err:
            inspect_adapter(adapter, bert["config"])
        assert says in str(err.value)


def _study(base: Path, imported: dict) -> dict:
    raw = small_study()
    raw["models"] = {"tinybert": {"path": str(base), "imported": imported}}
    raw["sweeps"]["components"]["adapters"] = None
    return raw


def test_config_names_the_imported_adapter(bert, tmp_path, monkeypatch) -> None:
    study = load_study(_study(bert["base"], {"external": {"path": str(bert["adapter"]),
                                                          "step": 3}}))
    model = study.models["tinybert"]
    imported = model.imported[0]
    assert (imported.name, imported.step, imported.rank, imported.targets_name) == (
        "external", 3, 2, "q_v_up")
    assert [a.name for a in model.adapters()] == ["r1-all", "external"]
    assert model.steps_of("external") == (3,) and model.steps_of("r1-all") == (1, 2)
    from lorascope.study import plan

    jobs = {(j.adapter, j.step, j.sweep, j.split) for j in plan.evaluation_jobs(study)}
    assert ("external", 3, "components", "dl19") in jobs
    assert ("external", 3, "checkpoints", "validation") in jobs

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=None) as err:
        load_study(_study(bert["base"], {"hubbed": {"hub": "someone/rankllama-lora",
                                                    "revision": "abc123"}}))
    assert ("config key 'models.tinybert.imported.hubbed': hub adapter 'someone/rankllama-lora' "
            "(revision abc123) is not in the local Hugging Face cache") in str(err.value)
    with pytest.raises(ConfigError, match="is a full model"):
        load_study(_study(bert["base"], {"full": {"path": str(bert["base"])}}))


def test_import_keeps_the_files_and_scores_as_plain_peft(bert, tmp_path) -> None:
    """The imported adapter, loaded as lorascope loads any extracted adapter, scores the pairs
    exactly as plain peft loading of the original directory does (atol 1e-6)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lorascope.core import fileio
    from lorascope.core.scoring import PreparedPairs
    from lorascope.importing import import_adapter
    from lorascope.models.adapted import load_adapted
    from lorascope.models.base import BaseModelSpec, prepare_base

    base = tmp_path / "prepared"
    prepare_base(BaseModelSpec("local", path=str(bert["base"])), base, lambda: [], progress=False)
    params = {"model": "tinybert", "adapter": "external", "step": 3,
              "source": {"path": str(bert["adapter"])}}
    manifest = import_adapter(params, base, tmp_path / "out")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert fileio.sha256_file(tmp_path / "out" / name) == fileio.sha256_file(
            bert["adapter"] / name)
    assert manifest["imported"]["path"] == str(bert["adapter"]) and manifest["step"] == 3
    assert manifest["rank"] == 2 and manifest["imported"]["roles"] == ["q", "v", "up"]

    model, tokenizer, arch = load_adapted(base, tmp_path / "out")
    queries, candidates = toy_pairs()
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                                   batch_tokens=256)
    ours = prepared.score(model, progress=False)
    plain = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(bert["base"], num_labels=1),
        bert["adapter"])
    plain.config.pad_token_id = tokenizer.pad_token_id
    theirs = prepared.score(plain, progress=False)
    assert ours.keys() == theirs.keys()
    torch.testing.assert_close(torch.tensor(list(ours.values())),
                               torch.tensor(list(theirs.values())), atol=1e-6, rtol=0)

    with pytest.raises(AdapterMismatch, match="maps to no role"):
        llama = build_base(tmp_path / "llama", "llama")
        from helpers import build_adapter

        other = build_adapter(llama, tmp_path / "for-llama")
        import_adapter({**params, "source": {"path": str(other)}}, base, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_more_mismatches_and_config_rules(bert, tmp_path) -> None:
    """Outputs of another width (a GQA base's k/v), a head with two outputs, a model with no
    adapter at all, step 0, and a sweep naming an adapter at a step it does not have."""
    narrow = dict(bert["config"], num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with pytest.raises(AdapterMismatch, match="gives outputs of width 32; the base model's v "
                                              "gives 16"):
        inspect_adapter(bert["adapter"], narrow)
    two = train_plain_peft(bert["base"], tmp_path / "two-labels")
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(two / "adapter_model.safetensors"))
    for key in [k for k in tensors if "classifier" in k]:
        tensors[key] = torch.cat([tensors[key], tensors[key]])
    save_file(tensors, str(two / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatch, match="a reranker head has one output"):
        inspect_adapter(two, bert["config"])

    raw = _study(bert["base"], {})
    raw["training"]["adapters"] = []
    with pytest.raises(ConfigError, match="the model has no adapters"):
        load_study(raw)
    raw = _study(bert["base"], {"external": {"path": str(bert["adapter"])}})
    raw["training"]["adapters"] = []  # imported only: nothing to train
    study = load_study(raw)
    assert [a.name for a in study.models["tinybert"].adapters()] == ["external"]
    raw = _study(bert["base"], {"external": {"path": str(bert["adapter"]), "step": 0}})
    with pytest.raises(ConfigError, match="imported.external.step': 0 is less than the minimum"):
        load_study(raw)
    raw = _study(bert["base"], {"external": {"path": str(bert["adapter"]), "step": 3}})
    raw["sweeps"]["components"].update(adapters=["r1-all"], step=3)
    with pytest.raises(ConfigError, match="adapter 'r1-all' of model 'tinybert' has no "
                                          "checkpoint 3"):
        load_study(raw)


def test_hub_adapter_from_the_local_cache(bert, tmp_path, monkeypatch) -> None:
    """A hub adapter pre-fetched into the Hugging Face cache is found offline; the snapshot's
    commit is part of its source (a revision that moves reruns the import)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--minilm-lora"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (snapshot / name).write_bytes((bert["adapter"] / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = load_study(_study(bert["base"], {"hubbed": {"hub": "someone/minilm-lora",
                                                        "revision": "main"}}))
    imported = study.models["tinybert"].imported[0]
    assert dict(imported.source) == {"hub": "someone/minilm-lora", "revision": "main",
                                     "commit": commit}
    assert imported.rank == 2 and imported.summary_targets == "imported q_v_up"
