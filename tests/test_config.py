"""The study config: shipped configs parse; every invalid value is refused naming its key."""

from __future__ import annotations

import copy

import pytest
import yaml

from lorascope.config import ConfigError, load_study, load_study_file

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
]


@pytest.mark.parametrize("mutate,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_key_and_value(mutate, expected):
    raw = copy.deepcopy(BASE)
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
