"""The study config: shipped configs parse; every invalid value is refused naming its key."""

from __future__ import annotations

import copy

import pytest
import yaml

from lorascope.study.parse import load_study, load_study_file
from lorascope.study.spec import ConfigError

BASE = {
    "study": "t",
    "data": {
        "train": {"source": "embedded", "dataset": "dl21"},
        "splits": {
            "validation": {"source": "embedded", "dataset": "dl21", "queries": 8, "depth": 20},
            "dl19": {"source": "embedded", "dataset": "dl19"},
        },
    },
    "models": {"tiny": {"tiny": {"architecture": "llama", "layers": 8, "width": 64}}},
    "training": {"adapters": [{"targets": "all", "ranks": [1, 8]}], "steps": [5, 10]},
}


def test_shipped_configs_parse(repo):
    for path in [repo / "config.yaml", *sorted((repo / "configs").glob("*.yaml"))]:
        study = load_study_file(path)
        assert study.models and study.splits, path


def test_defaults_filled_and_typed():
    study = load_study(BASE)
    assert study.seed == 13
    assert study.train.group_size == 16 and study.train.min_relevance == 2
    assert study.splits["dl19"].depth == 100 and study.splits["dl19"].queries is None
    assert study.metrics == ("nDCG@10", "RR(rel=2)", "AP(rel=2)")
    training = study.models["tiny"].training
    assert [a.name for a in training.adapters] == ["r1-all", "r8-all"]
    assert training.lora.alpha == 64 and training.steps == (5, 10)
    assert [s.name for s in study.holdout_splits()] == ["validation"]


def test_model_memory_from_config_else_default():
    raw = copy.deepcopy(BASE)
    raw["models"]["tiny"]["mem_mb"] = {"train": 3000}
    model = load_study(raw).models["tiny"]
    assert model.memory_mb("train") == 3000
    assert model.memory_mb("score") == 8000 and model.memory_mb("prepare") == 8000
    assert load_study(BASE).models["tiny"].memory_mb("train") == 16000
    with pytest.raises(KeyError, match="no memory stage 'evaluate'"):
        model.memory_mb("evaluate")


def test_model_overrides_merge_over_study_training():
    raw = copy.deepcopy(BASE)
    raw["models"]["tiny"]["training"] = {"lr": 0.01, "lora": {"alpha": 16}}
    training = load_study(raw).models["tiny"].training
    assert training.lr == 0.01 and training.lora.alpha == 16 and training.lora.dropout == 0.1


def test_hash_is_stable_and_sensitive():
    assert load_study(BASE).hash == load_study(copy.deepcopy(BASE)).hash
    raw = copy.deepcopy(BASE)
    raw["seed"] = 14
    assert load_study(raw).hash != load_study(BASE).hash


def _set(path, value):
    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


BAD = [
    ("unknown key", _set(["trainig"], {}), "config key '<top level>': unknown key 'trainig'"),
    ("unknown nested key", _set(["training", "lrr"], 1), "config key 'training': unknown key 'lrr'"),
    ("wrong type", _set(["training", "lr"], "fast"), "config key 'training.lr': 'fast' is not of type 'number'"),
    ("zero rank", _set(["training", "adapters", 0, "ranks"], [0, 8]), "config key 'training.adapters[0].ranks[0]': 0 is less than the minimum of 1"),
    ("negative rank", _set(["training", "adapters", 0, "ranks"], [-2]), "'training.adapters[0].ranks[0]': -2"),
    ("steps not increasing", _set(["training", "steps"], [10, 5]), "config key 'training.steps': checkpoint steps must be strictly increasing"),
    ("repeated step", _set(["training", "steps"], [5, 5]), "'training.steps'"),
    ("unknown split collection", _set(["data", "splits", "dl99"], {"source": "embedded", "dataset": "dl99"}), "config key 'data.splits.dl99.dataset': unknown embedded collection 'dl99'"),
    ("unknown source", _set(["data", "splits", "dl19", "source"], "s3"), "config key 'data.splits.dl19.source'"),
    ("unknown family", _set(["models", "tiny", "tiny", "architecture"], "gpt2"), "config key 'models.tiny.tiny.architecture': 'gpt2' is not one of"),
    ("missing local model", _set(["models", "local"], {"path": "/no/such/model"}), "config key 'models.local.path': '/no/such/model' is not a model directory"),
    ("missing gguf file", _set(["models", "g"], {"gguf": {"file": "/no/such.gguf"}}), "config key 'models.g.gguf.file': '/no/such.gguf' does not exist"),
    ("two sources", _set(["models", "tiny", "hub"], "a/b"), "config key 'models.tiny': give exactly one of"),
    ("bad metric", _set(["evaluation"], {"metrics": ["nDCG@10", "NDGC@10"]}), "config key 'evaluation.metrics[1]': 'NDGC@10' is not an ir-measures measure"),
    ("test split = training data", _set(["data", "splits", "dl19", "dataset"], "dl21"), "config key 'data.splits.dl19.queries'"),
    ("reserved split name", _set(["data", "splits", "train"], {"source": "embedded", "dataset": "dl19"}), "'train' is reserved"),
    ("accumulation mismatch", _set(["training", "queries_per_step"], 6), "config key 'training.queries_per_step': 6 is not a multiple of micro_batch_queries"),
    ("override bad key", _set(["models", "tiny", "training"], {"bogus": 1}), "config key 'models.tiny.training': unknown key 'bogus'"),
    ("width/heads", _set(["models", "tiny", "tiny", "heads"], 5), "config key 'models.tiny.tiny.width': 64 is not divisible by heads (5)"),
    ("role list without name", _set(["training", "adapters"], [{"targets": ["up", "gate"], "ranks": [8]}]), "needs a name"),
    ("unknown role", _set(["training", "adapters"], [{"targets": ["up", "gat"], "ranks": [8], "name": "ug"}]), "config key 'training.adapters[0].targets'"),
    ("missing models", lambda raw: raw.pop("models"), "'models' is a required property"),
    # LoRA variants
    ("unknown variant", _set(["training", "adapters", 0, "variant"], "qlora"), "config key 'training.adapters[0].variant': 'qlora' is not one of ['lora', 'dora'"),
    ("unknown variant in list", _set(["training", "adapters", 0, "variant"], ["dora", "qlora"]), "config key 'training.adapters[0].variant[1]': 'qlora' is not one of"),
    ("variant twice", _set(["training", "adapters", 0, "variant"], ["dora", "dora"]), "config key 'training.adapters[0].variant': ['dora', 'dora'] has non-unique elements"),
    ("empty variant list", _set(["training", "adapters", 0, "variant"], []), "config key 'training.adapters[0].variant': [] should be non-empty"),
    ("two initialisations", _set(["training", "adapters", 0, "variant"], ["pissa", "eva", "dora"]), "config key 'training.adapters[0].variant': pissa and eva are alternative initialisations"),
    ("lora combined", _set(["training", "adapters", 0, "variant"], ["lora", "rslora"]), "config key 'training.adapters[0].variant': 'lora' is plain LoRA and combines with no other variant"),
    ("pissa on 4-bit", lambda raw: raw["training"].update(quantize_4bit=True, adapters=[{"targets": "all", "ranks": [8], "variant": ["olora", "dora"]}]), "config key 'training.adapters[0].variant': olora moves part of each base weight"),
    ("pissa on 4-bit model override", lambda raw: (raw["models"]["tiny"].update(training={"quantize_4bit": True}), raw["training"]["adapters"][0].update(variant="pissa")), "config key 'models.tiny.training.adapters[0].variant': pissa moves"),
    ("variant duplicates name", _set(["training", "adapters"], [{"targets": "all", "ranks": [8], "variant": "dora"}, {"targets": "all", "ranks": [4, 8], "variant": ["dora"]}]), "config key 'training.adapters': adapter 'r8-all-dora' is listed twice"),
    ("default flags make the same run", lambda raw: raw["training"].update(lora={"dora": True}, adapters=[{"targets": "all", "ranks": [8]}, {"targets": "all", "ranks": [8], "variant": "dora"}]), "config key 'training.adapters': adapters 'r8-all' and 'r8-all-dora' are the same run"),
    ("sweep names unknown variant adapter", _set(["sweeps"], {"s": {"adapters": ["r8-all-dora"], "ablations": {"x": {"drop": "all"}}}}), "config key 'sweeps.s.adapters[0]': no model trains adapter 'r8-all-dora'"),
    ("bad adapter name", _set(["sweeps"], {"s": {"adapters": ["r8-all-"], "ablations": {"x": {"drop": "all"}}}}), "config key 'sweeps.s.adapters[0]': 'r8-all-' does not match"),
    # SVD compression sweeps
    ("svd without ranks", _set(["sweeps"], {"c": {"generate": "svd"}}), "config key 'sweeps.c.ranks': generate: svd needs the ranks"),
    ("ranks without svd", _set(["sweeps"], {"c": {"generate": "boundary", "ranks": [2]}}), "config key 'sweeps.c.ranks': ranks belong to generate: svd"),
    ("ranks without generate", _set(["sweeps"], {"c": {"ablations": {"x": {"drop": "all"}}, "ranks": [2]}}), "config key 'sweeps.c.ranks': ranks belong to generate: svd"),
    ("zero rank", _set(["sweeps"], {"c": {"generate": "svd", "ranks": [4, 0]}}), "config key 'sweeps.c.ranks[1]': 0 is less than the minimum of 1"),
    ("repeated rank", _set(["sweeps"], {"c": {"generate": "svd", "ranks": [2, 2]}}), "config key 'sweeps.c.ranks': [2, 2] has non-unique elements"),
    ("empty ranks", _set(["sweeps"], {"c": {"generate": "svd", "ranks": []}}), "config key 'sweeps.c.ranks': [] should be non-empty"),
    ("unknown generator", _set(["sweeps"], {"c": {"generate": "svdd", "ranks": [2]}}), "config key 'sweeps.c.generate': 'svdd' is not one of"),
    # analyses
    ("unknown analysis", _set(["analyses"], {"probe": {}}), "config key 'analyses': unknown key 'probe'"),
    ("boundary without sweep", _set(["analyses"], {"boundary": {}}), "config key 'analyses.boundary': 'sweep' is a required property"),
    ("boundary unknown sweep", _set(["analyses"], {"boundary": {"sweep": "nope"}}), "config key 'analyses.boundary.sweep': unknown sweep 'nope' (boundary sweeps: boundary)"),
    ("boundary not a boundary sweep", _set(["analyses"], {"boundary": {"sweep": "components"}}), "config key 'analyses.boundary.sweep': sweep 'components' is not a boundary sweep"),
    ("boundary unknown split", _set(["analyses"], {"boundary": {"sweep": "boundary", "splits": ["dl19", "dl20"]}}), "config key 'analyses.boundary.splits[1]': unknown split 'dl20'"),
    ("boundary selection split not in the sweep", _set(["analyses"], {"boundary": {"sweep": "boundary", "selection_split": "dl20"}}), "config key 'analyses.boundary.selection_split': b is chosen on split 'dl20', which sweep 'boundary' does not evaluate"),
    ("final split unknown", _set(["evaluation"], {"final_splits": ["dl20"]}), "config key 'evaluation.final_splits[0]': unknown split 'dl20'"),
    ("boundary unknown measure", _set(["analyses"], {"boundary": {"sweep": "boundary", "measure": "R@100"}}), "config key 'analyses.boundary.measure': 'R@100' is not one of evaluation.metrics"),
    ("lens unknown split", _set(["analyses"], {"lens": {"splits": ["dev"]}}), "config key 'analyses.lens.splits[0]': unknown split 'dev'"),
    ("lens unknown model", _set(["analyses"], {"lens": {"models": ["tiny", "big"]}}), "config key 'analyses.lens.models[1]': unknown model 'big'"),
    ("lens unknown adapter", _set(["analyses"], {"lens": {"adapters": ["r16-all"]}}), "config key 'analyses.lens.adapters[0]': no model trains adapter 'r16-all'"),
    ("anatomy unknown adapter", _set(["analyses"], {"anatomy": {"adapters": ["r8-mlp"]}}), "config key 'analyses.anatomy.adapters[0]': no model trains adapter 'r8-mlp'"),
    ("anatomy bad key", _set(["analyses"], {"anatomy": {"splits": ["dl19"]}}), "config key 'analyses.anatomy': unknown key 'splits'"),
    ("analysis null", _set(["analyses"], {"anatomy": None}), "config key 'analyses.anatomy': None is not of type 'object'"),
    ("compare unknown ablation", _set(["sweeps", "components", "compare"], [["no_lora", "mha_only"]]), "config key 'sweeps.components.compare[0][1]': 'mha_only' is not an ablation of the sweep (compare takes its listed ablations or full: full, no_lora; generated ones cannot be compared)"),
    ("compare with itself", _set(["sweeps", "components", "compare"], [["no_lora", "no_lora"]]), "config key 'sweeps.components.compare[0]': ['no_lora', 'no_lora'] compares an ablation with itself"),
    ("compare pair twice", _set(["sweeps", "components", "compare"], [["no_lora", "full"], ["full", "no_lora"]]), "config key 'sweeps.components.compare[1]': ['full', 'no_lora'] compares a pair listed before"),
    ("compare not a pair", _set(["sweeps", "components", "compare"], [["no_lora"]]), "config key 'sweeps.components.compare[0]': ['no_lora'] is too short"),
    ("zero memory", _set(["models", "tiny", "mem_mb"], {"train": 0}), "config key 'models.tiny.mem_mb.train': 0 is less than the minimum of 1"),
    ("unknown memory stage", _set(["models", "tiny", "mem_mb"], {"evaluate": 2000}), "config key 'models.tiny.mem_mb': unknown key 'evaluate'"),
]

SWEEPS = {
    "components": {"ablations": {"no_lora": {"drop": "all"}}},
    "boundary": {"generate": "boundary"},
}


@pytest.mark.parametrize("mutate,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_key_and_value(mutate, expected):
    raw = copy.deepcopy(BASE)
    raw["sweeps"] = copy.deepcopy(SWEEPS)
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        load_study(raw)
    assert expected in str(err.value)


def test_bad_file_named(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_study_file(path)
    path.write_text(yaml.safe_dump({**BASE, "seed": -1}))
    with pytest.raises(ConfigError, match=rf"(?s){path}: .*'seed': -1 is less than the minimum of 0"):
        load_study_file(path)


def test_relative_local_model_path_resolves_from_config_dir(tmp_path):
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    raw = copy.deepcopy(BASE)
    raw["models"] = {"m": {"path": "models/m"}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    study = load_study_file(tmp_path / "study.yaml")
    assert study.models["m"].source["path"] == str(model)


def test_adapter_variants_named_and_resolved():
    raw = copy.deepcopy(BASE)
    raw["training"]["lora"] = {"rslora": True}  # the default of adapters without a variant
    raw["training"]["adapters"] = [
        {"targets": "all", "ranks": [8]},
        {"targets": "all", "ranks": [8], "variant": "dora"},
        {"targets": "all", "ranks": [8], "variant": ["rslora", "dora"]},
        {"targets": "attn", "ranks": [4, 8], "variant": ["pissa", "rslora"]},
        {"targets": "mlp", "ranks": [8], "variant": "lora"},
        {"targets": ["up", "gate"], "name": "ug", "ranks": [2], "variant": "eva"},
    ]
    adapters = {a.name: a for a in load_study(raw).models["tiny"].training.adapters}
    assert list(adapters) == [
        "r8-all", "r8-all-dora", "r8-all-dora_rslora", "r4-attn-pissa_rslora",
        "r8-attn-pissa_rslora", "r8-mlp", "r2-ug-eva",
    ]
    assert adapters["r8-all"].variant == ("rslora",)  # from training.lora
    assert adapters["r8-all-dora"].variant == ("dora",)  # its own variant replaces the flags
    assert adapters["r8-mlp"].variant == ()  # explicit plain LoRA
    assert adapters["r8-all-dora_rslora"].train_fields() == {"use_dora": True, "use_rslora": True}
    pissa = adapters["r8-attn-pissa_rslora"]
    assert pissa.init == "pissa" and pissa.converted_at_extraction
    assert pissa.train_fields() == {"use_dora": False, "use_rslora": True, "init": "pissa"}
    eva = adapters["r2-ug-eva"]
    assert eva.targets == ("up", "gate") and eva.init == "eva" and not eva.converted_at_extraction


def test_model_override_of_lora_flags_keeps_adapter_names():
    raw = copy.deepcopy(BASE)
    raw["models"]["other"] = {"tiny": {"architecture": "llama", "layers": 2, "width": 32},
                              "training": {"lora": {"dora": True}}}
    raw["sweeps"] = {"s": {"adapters": ["r8-all"], "ablations": {"x": {"drop": "all"}}}}
    study = load_study(raw)
    tiny, other = (study.models[m].training.adapters[1] for m in ("tiny", "other"))
    assert tiny.name == other.name == "r8-all"
    assert tiny.variant == () and other.variant == ("dora",)


def test_svd_sweep_and_analyses_parsed():
    raw = copy.deepcopy(BASE)
    raw["training"]["adapters"].append({"targets": "all", "ranks": [8], "variant": "dora"})
    raw["sweeps"] = {
        **copy.deepcopy(SWEEPS),
        "compression": {"adapters": ["r8-all", "r8-all-dora"], "splits": ["dl19"], "generate": "svd", "ranks": [4, 2, 1]},
    }
    raw["analyses"] = {
        "boundary": {"sweep": "boundary"},
        "lens": {"adapters": ["r8-all"], "splits": ["validation", "dl19"]},
        "anatomy": {"models": ["tiny"]},
    }
    study = load_study(raw)
    compression = study.sweeps["compression"]
    assert compression.generate == "svd" and compression.ranks == (4, 2, 1)
    assert compression.spec() == {"ablations": {}, "generate": "svd", "ranks": [4, 2, 1]}
    assert study.sweeps["boundary"].ranks is None and "ranks" not in study.sweeps["boundary"].spec()
    boundary, lens, anatomy = study.analysis("boundary"), study.analysis("lens"), study.analysis("anatomy")
    # defaults: the convergence measure; every split but the convergence (selection) split
    assert (boundary.sweep, boundary.measure, boundary.splits) == ("boundary", "nDCG@10", ("dl19",))
    assert boundary.selection_split == "validation"  # the convergence split
    assert lens.splits == ("validation", "dl19") and lens.models is None
    model = study.models["tiny"]
    assert lens.selects(model) == ["r8-all"]
    assert anatomy.selects(model) == ["r1-all", "r8-all", "r8-all-dora"]
    raw["analyses"] = {"lens": {}}
    lens = load_study(raw).analysis("lens")
    assert lens.splits == ("validation",) and lens.adapters is None  # convergence split
    assert load_study(raw).analysis("boundary") is None and load_study(BASE).analysis("lens") is None


def test_hash_covers_variants_and_analyses():
    plain = load_study(BASE).hash
    raw = copy.deepcopy(BASE)
    raw["training"]["adapters"][0]["variant"] = "lora"
    assert load_study(raw).hash != plain  # the config changed, even if no run did
    raw = copy.deepcopy(BASE)
    raw["analyses"] = {"anatomy": {}}
    with_anatomy = load_study(raw).hash
    raw["analyses"] = {"anatomy": {"adapters": ["r8-all"]}}
    assert len({plain, with_anatomy, load_study(raw).hash}) == 3


def test_final_splits_evaluate_the_last_checkpoint_only():
    from lorascope.study.plan import CHECKPOINTS, evaluation_jobs

    raw = copy.deepcopy(BASE)
    raw["evaluation"] = {"splits": ["validation"], "final_splits": ["dl19", "validation"]}
    study = load_study(raw)
    assert study.evaluation.final_splits == ("dl19",)  # validation already has every step
    curves = [(j.adapter, j.step, j.split) for j in evaluation_jobs(study) if j.sweep == CHECKPOINTS]
    expected = []
    for adapter in ("r1-all", "r8-all"):
        expected += [(adapter, 5, "validation"), (adapter, 10, "validation"), (adapter, 10, "dl19")]
    assert curves == expected
