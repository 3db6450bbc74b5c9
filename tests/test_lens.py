"""The relevance lens on tiny LLaMA / Mistral / GPT-NeoX / BERT rerankers with random adapters.

What pins the maths: the deepest lens layer is the model's own score (LoRA on and off); every
lens layer l is the score of the same model cut after l blocks; Hugging Face's last hidden
state is already final-normed (so the lens must not normalise it again); padding does not leak
between the pairs of a batch; swapping checkpoints in place equals loading them fresh.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import build_adapter, build_base, load_adapted, prepare, toy_pairs, write_toy_split

from lorascope.core import metrics, roles
from lorascope.analyses.lens import LENS, LENS_QUERIES
from lorascope.core.contracts import QRELS, read_provenance, read_table
from lorascope.data.splits import split_paths

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = ["llama", "mistral", "gpt_neox", "bert"]
ATOL = 1e-5


# --------------------------------------------------------------------------- helpers


def perturb_final_norm(model, arch, seed: int = 0) -> None:
    """Random final-norm parameters: with the initial weight 1 / bias 0 a second RMSNorm or
    LayerNorm is (almost) the identity, and a double normalisation would go unnoticed."""
    import torch

    from lorascope.core.readout import readout_for, task_model

    path = readout_for(arch).norm
    if path is None:
        return
    norm = task_model(model).get_submodule(path)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=generator))


def own_scores(prepared, model):
    import numpy as np

    scores = prepared.score(model, progress=False)
    return np.array([scores[k] for k in prepared.keys])


def all_lora(model, arch):
    from lorascope.core.switching import lora_modules

    return set(lora_modules(model, arch))


def cut_after(model, arch, blocks: int):
    """A deep copy of the reranker keeping only its first ``blocks`` transformer blocks."""
    import torch

    from lorascope.core.readout import task_model

    cut = copy.deepcopy(model)
    task = task_model(cut)
    parent, name = arch.layer_prefix.rsplit(".", 1)
    layers = task.get_submodule(arch.layer_prefix)
    setattr(task.get_submodule(parent), name, torch.nn.ModuleList(list(layers)[:blocks]))
    return cut


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lens-bases")
    return {t: build_base(root / t, t) for t in ARCHITECTURES}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def adapted(request, bases, tmp_path_factory) -> dict:
    model_type = request.param
    adapter = build_adapter(bases[model_type], tmp_path_factory.mktemp(f"lens-{model_type}"))
    model, tokenizer, arch = load_adapted(bases[model_type], adapter)
    perturb_final_norm(model, arch)
    return {"model": model, "arch": arch, "prepared": prepare(tokenizer, arch),
            "tokenizer": tokenizer, "base": bases[model_type], "adapter": adapter}


# --------------------------------------------------------------------------- readout


@pytest.mark.parametrize("lora", ["on", "off"])
def test_last_layer_is_the_model_score(adapted, lora) -> None:
    import numpy as np

    from lorascope.core.readout import score_layers
    from lorascope.core.switching import zeroed

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    depth = roles.num_layers(model.config)
    with zeroed(model, arch, all_lora(model, arch)) if lora == "off" else nullcontext():
        layers = score_layers(prepared, model, arch, progress=False)
        own = own_scores(prepared, model)
    assert layers.values.shape == (len(prepared), depth + 1)
    assert layers.keys == prepared.keys
    np.testing.assert_allclose(layers.values[:, -1], own, atol=ATOL, rtol=0)
    np.testing.assert_allclose(layers.model_scores, own, atol=ATOL, rtol=0)
    assert layers.final_diff <= ATOL
    # the layers say different things (the test could fail), and LoRA matters
    assert np.abs(layers.values[:, 0] - layers.values[:, -1]).max() > 1e-3
    if lora == "off":
        assert np.abs(own - own_scores(prepared, model)).max() > 1e-3


def test_each_layer_is_the_model_cut_after_it(adapted) -> None:
    """Lens layer l == the score of the reranker truncated to its first l blocks (its own
    norm and head then read block l's output): the hidden-state indexing and the readout of
    every intermediate layer, checked against an independent forward pass."""
    import numpy as np

    from lorascope.core.readout import score_layers

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    layers = score_layers(prepared, model, arch, progress=False)
    for blocks in range(layers.depth + 1):
        expected = own_scores(prepared, cut_after(model, arch, blocks))
        np.testing.assert_allclose(layers.values[:, blocks], expected, atol=ATOL, rtol=0,
                                   err_msg=f"layer {blocks}")


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_hf_last_hidden_state_is_already_normed(bases, tmp_path, model_type) -> None:
    """The convention the readout relies on: hidden_states[l] for l < L are raw block outputs,
    hidden_states[L] is norm(raw output of block L) - normalising it again changes it."""
    import torch

    from lorascope.core.readout import readout_for, task_model
    from lorascope.models.reranker import encode_pairs

    adapter = build_adapter(bases[model_type], tmp_path / "a")
    model, tokenizer, arch = load_adapted(bases[model_type], adapter)
    perturb_final_norm(model, arch)
    task = task_model(model)
    norm = task.get_submodule(readout_for(arch).norm)
    blocks = list(task.get_submodule(arch.layer_prefix))
    raw: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(
        lambda m, a, out: raw.append(out[0] if isinstance(out, tuple) else out)) for b in blocks]
    queries, candidates = toy_pairs()
    batch = encode_pairs(tokenizer, arch, [queries[q] for q, _, _ in candidates[:3]],
                         [t for _, _, t in candidates[:3]], 64)
    with torch.inference_mode():
        hidden = task(**batch, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    assert len(hidden) == len(blocks) + 1
    for layer in range(1, len(blocks)):
        torch.testing.assert_close(hidden[layer], raw[layer - 1], rtol=0, atol=0)
    torch.testing.assert_close(hidden[-1], norm(raw[-1]), rtol=0, atol=1e-6)
    assert (norm(hidden[-1]) - hidden[-1]).abs().max() > 1e-2  # a double norm would show


def test_padding_does_not_leak(adapted) -> None:
    """Every lens layer gives the same scores in padded multi-pair batches as pair by pair."""
    import numpy as np

    from lorascope.core.readout import score_layers

    model, arch, prepared = adapted["model"], adapted["arch"], adapted["prepared"]
    batched = score_layers(prepared, model, arch, progress=False)
    assert batched.stats["batches"] < len(prepared) and batched.stats["padding_ratio"] > 1.0
    alone = score_layers(prepared, model, arch, batch_tokens=1, progress=False)
    assert alone.stats["batches"] == len(prepared)
    np.testing.assert_allclose(batched.values, alone.values, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("model_type", "variant", "dtype"), [
    ("llama", "dora", "float32"), ("bert", "lora", "float32"),
    ("llama", "lora", "bfloat16"), ("bert", "dora", "bfloat16"),
])
def test_swap_equals_fresh_load(bases, tmp_path, model_type, variant, dtype) -> None:
    """Swapping a checkpoint into the loaded model == loading it fresh, bitwise (DoRA
    magnitudes and BERT's pooler + classifier head included), in fp32 and in bf16."""
    from lorascope.models.adapted import swap_checkpoint

    first = build_adapter(bases[model_type], tmp_path / "1", use_dora=variant == "dora", seed=1)
    second = build_adapter(bases[model_type], tmp_path / "2", use_dora=variant == "dora", seed=2)
    model, tokenizer, arch = load_adapted(bases[model_type], first, dtype)
    prepared = prepare(tokenizer, arch)
    before = own_scores(prepared, model)
    swap_checkpoint(model, second, "cpu")
    fresh, _, _ = load_adapted(bases[model_type], second, dtype)
    swapped = own_scores(prepared, model)
    assert (swapped == own_scores(prepared, fresh)).all()
    assert abs(swapped - before).max() > 1e-3


def test_swap_refuses_another_adapter_shape(bases, tmp_path) -> None:
    from lorascope.models.adapted import swap_checkpoint

    full = build_adapter(bases["llama"], tmp_path / "all")
    mlp = build_adapter(bases["llama"], tmp_path / "mlp", targets="mlp")
    model, _, _ = load_adapted(bases["llama"], full)
    with pytest.raises(ValueError, match="holds other tensors than the loaded checkpoint"):
        swap_checkpoint(model, mlp, "cpu")


# --------------------------------------------------------------------------- stage

MEASURES = ["nDCG@10", "RR(rel=2)"]


@pytest.fixture(scope="module")
def run(bases, tmp_path_factory) -> dict:
    """A two-checkpoint run of a 3-block LLaMA, a toy split, and the lens stage's outputs."""
    from lorascope.analyses.lens.stage import lens

    root = tmp_path_factory.mktemp("lens-stage")
    base = bases["llama"]
    checkpoints = {5: build_adapter(base, root / "step-5", seed=5),
                   10: build_adapter(base, root / "step-10", seed=10)}
    queries, candidates = write_toy_split(root / "split")
    params = {"model": "tiny", "adapter": "r4-all", "split": "toy", "metrics": MEASURES,
              "scoring": {"batch_tokens": 256, "max_length": 64}, "epsilon": 0.02}
    out = {name: root / "out" / name
           for name in ("lens.parquet", "lens_queries.parquet", "summary.json")}
    summary = lens(params, base, checkpoints, root / "split", out["lens.parquet"],
                   out["summary.json"], out_per_query=out["lens_queries.parquet"],
                   progress=False)
    return {"base": base, "checkpoints": checkpoints, "split": root / "split", "out": out,
            "params": params, "summary": summary, "queries": queries, "candidates": candidates}


def _qrels(split: Path):
    return read_table(split_paths(split)["qrels"], QRELS)


def test_stage_tables(run) -> None:
    depth, steps = 3, [0, 5, 10]
    rows = read_table(run["out"]["lens.parquet"], LENS).to_pylist()
    assert len(rows) == len(steps) * depth * len(MEASURES)  # layers 1..L: no embeddings
    assert {(r["step"], r["layer"], r["measure"]) for r in rows} == {
        (s, layer, m) for s in steps for layer in range(1, depth + 1) for m in MEASURES}
    assert {(r["model"], r["adapter"], r["split"]) for r in rows} == {("tiny", "r4-all", "toy")}
    assert {r["queries"] for r in rows} == {len(run["queries"])}
    per_query = read_table(run["out"]["lens_queries.parquet"], LENS_QUERIES).to_pylist()
    assert len(per_query) == len(rows) * len(run["queries"])
    for row in rows[:: max(1, len(rows) // 7)]:
        values = [q["value"] for q in per_query if (q["step"], q["layer"], q["measure"]) ==
                  (row["step"], row["layer"], row["measure"])]
        assert row["value"] == pytest.approx(sum(values) / len(values))
    assert read_provenance(run["out"]["lens.parquet"])["stage"] == "lens"


def test_stage_last_layer_is_each_checkpoints_evaluation(run) -> None:
    """Layer L of step s == the metrics of checkpoint s loaded fresh and scored normally (so
    the in-place swaps were exact); step 0 == all LoRA off with the last checkpoint's head."""
    from lorascope.core.scoring import PreparedPairs
    from lorascope.core.switching import zeroed

    rows = read_table(run["out"]["lens_queries.parquet"], LENS_QUERIES).to_pylist()
    qrels = _qrels(run["split"])
    for step, adapter in [(5, run["checkpoints"][5]), (10, run["checkpoints"][10]),
                          (0, run["checkpoints"][10])]:
        model, tokenizer, arch = load_adapted(run["base"], adapter)
        prepared = PreparedPairs.build(tokenizer, arch, run["queries"], run["candidates"],
                                       max_length=64, batch_tokens=256)
        with zeroed(model, arch, all_lora(model, arch)) if step == 0 else nullcontext():
            scores = prepared.score(model, progress=False)
        expected = metrics.per_query(qrels, [(q, d, s) for (q, d), s in scores.items()],
                                     MEASURES)
        for m in MEASURES:
            got = {r["qid"]: r["value"] for r in rows
                   if (r["step"], r["layer"], r["measure"]) == (step, 3, m)}
            assert got == pytest.approx(expected[m]), (step, m)


def test_stage_summary(run) -> None:
    summary = json.loads(run["out"]["summary.json"].read_text())
    assert summary == json.loads(json.dumps(run["summary"]))
    assert (summary["model"], summary["adapter"], summary["split"]) == ("tiny", "r4-all", "toy")
    assert summary["steps"] == [0, 5, 10] and summary["depth"] == 3
    assert summary["layers"] == [1, 2, 3]
    assert summary["base"] == {"step": 0, "lora": "every LoRA update switched off",
                               "head_from_step": 10, "original_base": True}
    rows = read_table(run["out"]["lens.parquet"], LENS).to_pylist()
    for entry in summary["per_step"]:
        assert entry["final_layer_max_rel_diff"] <= ATOL and entry["seconds"] > 0
        for m in MEASURES:
            curve = {layer: next(r["value"] for r in rows if (r["step"], r["layer"],
                                                              r["measure"]) ==
                                 (entry["step"], layer, m)) for layer in (1, 2, 3)}
            assert entry["by_layer"][m] == pytest.approx(list(curve.values()))
            best, top = entry["best_layer"][m], max(curve.values())
            assert curve[best] == top and all(curve[lay] < top for lay in range(1, best))
            readable, final = entry["readable_from"][m], curve[3]
            assert curve[readable] >= final - 0.02
            assert all(curve[lay] < final - 0.02 for lay in range(1, readable))
            assert entry["final_value"][m] == pytest.approx(final)
    assert summary["provenance"]["stage"] == "lens"
    assert summary["provenance"]["params"] == run["params"]
    assert summary["provenance"]["base_head_step"] == 10


def test_stage_refuses_bad_checkpoints(run, tmp_path) -> None:
    from lorascope.analyses.lens.stage import lens

    out = (tmp_path / "lens.parquet", tmp_path / "summary.json")
    args = (run["params"], run["base"])
    with pytest.raises(ValueError, match="step 0 is the base model"):
        lens(*args, {0: run["checkpoints"][5]}, run["split"], *out, progress=False)
    with pytest.raises(ValueError, match="no adapter checkpoints"):
        lens(*args, {}, run["split"], *out, progress=False)
    with pytest.raises(FileNotFoundError, match="no peft adapter directory"):
        lens(*args, {5: tmp_path / "missing"}, run["split"], *out, progress=False)
    mlp = build_adapter(run["base"], tmp_path / "mlp", targets="mlp")
    with pytest.raises(ValueError, match="different adapter configs.*target_modules"):
        lens(*args, {5: run["checkpoints"][5], 10: mlp}, run["split"], *out, progress=False)
    assert not any(p.exists() for p in out)


def test_params_checks() -> None:
    from lorascope.analyses.lens.stage import LensSettings
    from lorascope.models.reranker import MAX_LENGTH

    settings = LensSettings.from_params({"metrics": ["nDCG@10"], "model": "m"})
    assert (settings.epsilon, settings.batch_tokens, settings.max_length,
            settings.scoring.precision) == (0.01, 16384, MAX_LENGTH, "fp32")
    with pytest.raises(ValueError, match=r"unknown keys \['epsilion'\]"):
        LensSettings.from_params({"metrics": ["nDCG@10"], "epsilion": 0.1})
    with pytest.raises(ValueError, match=r"unknown keys \['scoring.batch_size'\]"):
        LensSettings.from_params({"metrics": ["nDCG@10"], "scoring": {"batch_size": 8}})
    with pytest.raises(ValueError, match="'metrics' must be a non-empty list"):
        LensSettings.from_params({"metrics": []})
    with pytest.raises(ValueError, match="'epsilon' must be >= 0"):
        LensSettings.from_params({"metrics": ["nDCG@10"], "epsilon": -1})
    with pytest.raises(ValueError, match="scoring.precision must be one of"):
        LensSettings.from_params({"metrics": ["nDCG@10"], "scoring": {"precision": "int8"}})
    with pytest.raises(ValueError, match=r"unknown keys \['scoring.dtype'\]; known: scoring.batch"):
        LensSettings.from_params({"metrics": ["nDCG@10"], "scoring": {"dtype": "float32"}})
