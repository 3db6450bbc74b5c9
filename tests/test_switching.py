"""In-place LoRA switching on tiny LLaMA / GPT-NeoX / BERT adapters (plain LoRA, rsLoRA, DoRA).

The module-level helpers (tiny base models, random adapters, reference models) are shared with
test_scoring.py and test_evaluate.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import Collection, Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from lorascope import roles

WORDS = ["apple", "river", "stone", "cloud", "tiger", "music", "paper", "glass", "green", "quiet", "north", "silver", "engine", "garden", "winter", "doctor", "market", "castle", "forest", "planet", "yellow", "bridge", "candle", "rocket"]


# --------------------------------------------------------------------------- shared helpers


def passages(n: int, seed: int = 0, low: int = 3, high: int = 40) -> list[str]:
    """Random word passages of varied length."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + "."
            for _ in range(n)]


def toy_pairs(n_queries: int = 4, per_query: int = 6, seed: int = 0
              ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Queries and candidates ``(qid, docid, text)`` of varied length."""
    rng = random.Random(seed)
    queries = {f"q{i}": " ".join(rng.sample(WORDS, 2)) for i in range(n_queries)}
    texts = passages(n_queries * per_query, seed=seed + 1)
    candidates = [(f"q{i}", f"d{i}-{j}", texts[i * per_query + j])
                  for i in range(n_queries) for j in range(per_query)]
    return queries, candidates


def _bert_tokenizer(texts: Iterable[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def build_base(out_dir: Path, model_type: str, layers: int = 3, width: int = 32) -> Path:
    """A randomly initialised tiny base model directory (model + tokenizer), like prepare_base."""
    import torch

    texts = passages(300, seed=7)
    if model_type == "bert":
        from transformers import BertConfig, BertModel

        tokenizer = _bert_tokenizer(texts)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=width,
                            num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=2 * width, max_position_embeddings=256,
                            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = BertModel(config)
    else:
        from lorascope.models.tiny import build_tiny, train_tokenizer

        tokenizer = train_tokenizer(texts, 300)
        model = build_tiny(model_type, layers, width, 4, 300, tokenizer, seed=0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    targets: str | list[str] = "all",
    use_dora: bool = False,
    use_rslora: bool = False,
    seed: int = 1,
) -> Path:
    """A LoRA adapter (r=4) on ``targets`` with random A, B, DoRA magnitudes and head, saved.

    peft initialises ``lora_B`` to zero (LoRA starts as the identity); random values stand in
    for training so that every ablation changes the scores.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from lorascope.models.reranker import load_reranker

    torch.manual_seed(seed)
    model, _, arch = load_reranker(base_dir)
    target_roles = roles.resolve_targets(arch, targets)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
        target_modules=roles.target_modules(arch, target_roles,
                                            num_layers=roles.num_layers(model.config)),
        modules_to_save=list(arch.head_modules), use_dora=use_dora, use_rslora=use_rslora,
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for name in ("default",):
                    for w in (module.lora_A[name].weight, module.lora_B[name].weight):
                        w.copy_(torch.randn(w.shape, generator=generator) * 0.2)
                    if use_dora:
                        m = module.lora_magnitude_vector[name].weight
                        m.mul_(1 + 0.3 * torch.rand(m.shape, generator=generator))
            elif isinstance(module, ModulesToSaveWrapper):
                for p in module.modules_to_save["default"].parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(out_dir)
    return out_dir


def load_adapted(base_dir: Path, adapter_dir: Path):
    """Base + adapter through the evaluate stage's loader: ``(model, tokenizer, arch)``."""
    from lorascope.evaluate import load_adapted as load

    return load(base_dir, adapter_dir)


def reference_model(base_dir: Path, adapter_dir: Path, zeroed: Collection[tuple[int, str]]):
    """A fresh load whose ``zeroed`` LoRA updates are removed from the weights themselves:
    ``lora_B = 0`` (and, for DoRA, the magnitude reset to the base weight's column norms, the
    state DoRA starts from - with ``lora_B = 0`` alone DoRA still rescales ``W``)."""
    import torch

    from lorascope.switching import lora_modules

    model, _, arch = load_adapted(base_dir, adapter_dir)
    table = lora_modules(model, arch)
    with torch.no_grad():
        for key in zeroed:
            layer = table[key]
            layer.lora_B["default"].weight.zero_()
            if layer.use_dora.get("default"):
                dora = layer.lora_magnitude_vector["default"]
                weight = layer.get_base_layer().weight
                zeros = torch.zeros_like(weight)
                dora.weight.copy_(dora.get_weight_norm(weight, zeros,
                                                       layer.scaling["default"]))
    return model


def prepare(tokenizer, arch, seed: int = 0, batch_tokens: int = 256):
    from lorascope.scoring import PreparedPairs

    queries, candidates = toy_pairs(seed=seed)
    return PreparedPairs.build(tokenizer, arch, queries, candidates, max_length=64,
                               batch_tokens=batch_tokens)


def as_tensor(scores: dict) -> torch.Tensor:  # noqa: F821
    import torch

    return torch.tensor([scores[k] for k in sorted(scores)], dtype=torch.float64)


def model_state(model) -> dict:
    """Everything switching could disturb: weights, grad flags, enable flags, active adapters."""
    from peft.tuners.lora import LoraLayer

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    flags = {n: (m.disable_adapters, m.active_adapter, m.merged)
             for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    return {"weights": weights, "grads": grads, "flags": flags}


def assert_same_state(a: dict, b: dict) -> None:
    import torch

    assert a["grads"] == b["grads"]
    assert a["flags"] == b["flags"]
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine OpenMP threads that
    wait for a busy core turn a 5 ms forward pass into a second."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VARIANTS = [
    ("llama", "lora"), ("gpt_neox", "lora"), ("bert", "lora"),
    ("llama", "dora"), ("llama", "rslora"), ("gpt_neox", "dora"), ("bert", "dora"),
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {t: build_base(root / t, t) for t in ("llama", "gpt_neox", "bert")}


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def adapted(request, bases, tmp_path_factory):
    model_type, variant = request.param
    out = tmp_path_factory.mktemp(f"adapter-{model_type}-{variant}")
    adapter = build_adapter(bases[model_type], out, use_dora=variant == "dora",
                            use_rslora=variant == "rslora")
    model, tokenizer, arch = load_adapted(bases[model_type], adapter)
    return {"base": bases[model_type], "adapter": adapter, "model": model,
            "tokenizer": tokenizer, "arch": arch, "variant": variant}


def _ablations(arch: roles.ArchitectureRoles, depth: int) -> dict[str, frozenset]:
    every = {(layer, role) for layer in range(depth) for role in arch.roles}
    rng = random.Random(3)
    return {
        "no_lora": frozenset(every),
        "mlp_zeroed": frozenset(m for m in every if m[1] in arch.mlp_roles),
        "attn_zeroed": frozenset(m for m in every if m[1] in arch.attention_roles),
        "layer_1": frozenset(m for m in every if m[0] == 1),
        "random_subset": frozenset(rng.sample(sorted(every), len(every) // 3)),
    }


# --------------------------------------------------------------------------- tests


def test_lora_modules_finds_every_target(adapted) -> None:
    from lorascope.switching import lora_modules

    arch, model = adapted["arch"], adapted["model"]
    depth = roles.num_layers(model.config)
    found = lora_modules(model, arch)
    assert set(found) == {(layer, role) for layer in range(depth) for role in arch.roles}


def test_zeroed_equals_lora_b_zeroed_reload(adapted) -> None:
    """(a) Switching == a fresh load with those LoRA updates removed from the weights; the
    comparison is bitwise (stricter than the 1e-6 asked for) for LoRA, rsLoRA and DoRA."""
    import torch

    from lorascope.switching import disabled_modules, zeroed

    model, arch = adapted["model"], adapted["arch"]
    prepared = prepare(adapted["tokenizer"], arch)
    full = as_tensor(prepared.score(model, progress=False))
    for name, modules in _ablations(arch, roles.num_layers(model.config)).items():
        with zeroed(model, arch, modules):
            assert disabled_modules(model, arch) == modules
            ablated = as_tensor(prepared.score(model, progress=False))
        reference = reference_model(adapted["base"], adapted["adapter"], modules)
        expected = as_tensor(prepared.score(reference, progress=False))
        assert torch.equal(ablated, expected), (name, (ablated - expected).abs().max())
        assert (ablated - full).abs().max() > 1e-3, f"{name} did not change the scores"
        assert not disabled_modules(model, arch)


def test_full_adapter_reproduced_after_sweep(adapted) -> None:
    """(b) After a sweep the full adapter gives bitwise its original scores, state intact."""
    import torch

    from lorascope.switching import zeroed

    model, arch = adapted["model"], adapted["arch"]
    prepared = prepare(adapted["tokenizer"], arch)
    before_state = model_state(model)
    before = as_tensor(prepared.score(model, progress=False))
    for modules in _ablations(arch, roles.num_layers(model.config)).values():
        with zeroed(model, arch, modules):
            prepared.score(model, progress=False)
    after = as_tensor(prepared.score(model, progress=False))
    assert torch.equal(before, after)
    assert_same_state(before_state, model_state(model))


def test_restored_on_exception(adapted) -> None:
    from lorascope.switching import disabled_modules, zeroed

    model, arch = adapted["model"], adapted["arch"]
    before = model_state(model)
    modules = _ablations(arch, roles.num_layers(model.config))["mlp_zeroed"]
    with pytest.raises(RuntimeError, match="boom"), zeroed(model, arch, modules):
        assert disabled_modules(model, arch) == modules
        raise RuntimeError("boom")
    assert not disabled_modules(model, arch)
    assert_same_state(before, model_state(model))


def test_trained_head_stays(adapted) -> None:
    """(c) "No LoRA updates" keeps the trained head: it equals the base model with the trained
    head copied in, and differs from peft's disable_adapter() (which reverts the head)."""
    import torch
    from peft.utils import ModulesToSaveWrapper

    from lorascope.models.reranker import load_reranker
    from lorascope.switching import zeroed

    model, arch = adapted["model"], adapted["arch"]
    prepared = prepare(adapted["tokenizer"], arch)
    everything = _ablations(arch, roles.num_layers(model.config))["no_lora"]
    with zeroed(model, arch, everything):
        no_lora = as_tensor(prepared.score(model, progress=False))
    with model.disable_adapter():
        untrained_head = as_tensor(prepared.score(model, progress=False))
    assert (no_lora - untrained_head).abs().max() > 1e-3

    torch.manual_seed(123)
    plain, _, _ = load_reranker(adapted["base"])
    trained = {}
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            inner = name.removeprefix("base_model.model.")
            for key, value in module.modules_to_save["default"].state_dict().items():
                trained[f"{inner}.{key}"] = value
    missing = set(trained) - set(plain.state_dict())
    assert not missing
    plain.load_state_dict(trained, strict=False)
    head_only = as_tensor(prepared.score(plain, progress=False))
    assert torch.equal(no_lora, head_only)


def test_dora_scale_zero_is_not_ablation(bases, tmp_path) -> None:
    """Why switching disables layers: DoRA's scale 0 keeps the magnitude rescaling of W."""

    from lorascope.switching import lora_modules

    adapter = build_adapter(bases["llama"], tmp_path / "dora", use_dora=True)
    model, tokenizer, arch = load_adapted(bases["llama"], adapter)
    prepared = prepare(tokenizer, arch)
    modules = {(0, "up"), (1, "q")}
    table = lora_modules(model, arch)
    for key in modules:
        table[key].set_scale("default", 0.0)
    scaled = as_tensor(prepared.score(model, progress=False))
    reference = as_tensor(prepared.score(
        reference_model(bases["llama"], adapter, modules), progress=False))
    assert (scaled - reference).abs().max() > 1e-4


def test_missing_module_is_a_clear_error(bases, tmp_path) -> None:
    from lorascope.switching import SwitchingError, lora_modules, zeroed

    adapter = build_adapter(bases["gpt_neox"], tmp_path / "mlp", targets="mlp")
    model, _, arch = load_adapted(bases["gpt_neox"], adapter)
    assert {r for _, r in lora_modules(model, arch)} == {"up", "down"}
    with (pytest.raises(SwitchingError, match=r"no LoRA on layer 0 qkv.*roles down, up"),
          zeroed(model, arch, {(0, "qkv"), (0, "up")})):
        pass
    assert not any(m.disable_adapters for m in lora_modules(model, arch).values())


def test_merged_layer_is_refused(bases, tmp_path) -> None:
    from lorascope.switching import SwitchingError, lora_modules, zeroed

    adapter = build_adapter(bases["llama"], tmp_path / "a")
    model, _, arch = load_adapted(bases["llama"], adapter)
    lora_modules(model, arch)[(0, "q")].merge()
    with pytest.raises(SwitchingError, match="merged"), zeroed(model, arch, {(0, "q")}):
        pass
