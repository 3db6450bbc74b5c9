"""Ablation specs: selectors, keep/drop semantics, generators, and every error message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorascope.core.ablation import (
    FULL,
    Ablation,
    AblationError,
    all_modules,
    parse_layers,
    resolve_sweep,
    resolve_sweeps,
)
from lorascope.core.roles import roles_for

LLAMA = roles_for("llama")
NEOX = roles_for("gpt_neox")
EVERY = all_modules(8, LLAMA.roles)


def resolve(ablations=None, *, generate=None, layers=8, arch=LLAMA, trained=None, name="s"):
    spec = {}
    if ablations is not None:
        spec["ablations"] = ablations
    if generate is not None:
        spec["generate"] = generate
    return resolve_sweep(name, spec, num_layers=layers, arch_roles=arch, trained=trained)


def zeroed_of(ablations, **kw) -> dict[str, frozenset]:
    return {a.name: a.zeroed for a in resolve(ablations, **kw)}


def mods(layers, roles) -> frozenset:
    return frozenset((layer, role) for layer in layers for role in roles)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("text, expected", [
    ("5-7", (5, 6, 7)),
    ("0-1,6-7", (0, 1, 6, 7)),
    ("3", (3,)),
    (" 1 , 3-4 ", (1, 3, 4)),
    ("2-2", (2,)),
    ("0-3,2-4", (0, 1, 2, 3, 4)),
    (7, (7,)),
    ([4, 1, 1], (1, 4)),
])
def test_parse_layers(text, expected) -> None:
    assert parse_layers(text, 8) == expected


@pytest.mark.parametrize("text, message", [
    ("5-31", "layer 31 out of range (model has 8 layers: 0-7)"),
    ("8", "layer 8 out of range (model has 8 layers: 0-7)"),
    ([0, 9], "layer 9 out of range"),
    ([-1], "layer -1 out of range"),
    ("5-", "bad layer range '5-'"),
    ("a-b", "bad layer range 'a-b'"),
    ("1,,2", "bad layer range ''"),
    ("-1", "bad layer range '-1'"),
    ("", "empty layer spec"),
    ("7-5", "layer range '7-5' is reversed"),
    ([], "non-empty list of ints"),
    (True, "non-empty list of ints"),
    (["1"], "non-empty list of ints"),
])
def test_parse_layers_errors(text, message) -> None:
    with pytest.raises(AblationError, match=_re(message)):
        parse_layers(text, 8)


def _re(text: str) -> str:
    import re

    return re.escape(text)


# --------------------------------------------------------------------------- selectors


def test_full_is_first_and_empty() -> None:
    out = resolve({"no_lora": {"drop": "all"}})
    assert [a.name for a in out] == [FULL, "no_lora"]
    assert out[0] == Ablation(FULL, frozenset()) and out[0].is_full
    assert out[1].zeroed == EVERY


def test_empty_sweep_is_full_only() -> None:
    assert resolve() == [Ablation(FULL, frozenset())]
    assert resolve_sweep("s", None, num_layers=2, arch_roles=LLAMA) == [Ablation(FULL, frozenset())]


def test_selector_forms() -> None:
    z = zeroed_of({
        "mlp_only": {"keep": {"component": "mlp"}},
        "mha_only": {"keep": {"component": "attn"}},
        "layers_2_5": {"keep": {"layers": "2-5"}},
        "split": {"keep": {"layers": "0-1,6-7"}},
        "up_gate": {"keep": {"roles": ["up", "gate"]}},
        "one_role": {"keep": {"roles": "down"}},
        "mid_mlp": {"keep": {"component": "mlp", "layers": "2-5"}},
        "either": {"drop": [{"layers": "0-1"}, {"roles": ["down"]}]},
        "keep_and_drop": {"keep": {"layers": "2-5"}, "drop": {"roles": ["q"]}},
        "layer_list": {"drop": {"layers": [0, 7]}},
        "layer_int": {"drop": {"layers": 3, "component": "attn"}},
    })
    attn, mlp = LLAMA.attention_roles, LLAMA.mlp_roles
    assert z["mlp_only"] == mods(range(8), attn)
    assert z["mha_only"] == mods(range(8), mlp)
    assert z["layers_2_5"] == EVERY - mods(range(2, 6), LLAMA.roles)
    assert z["split"] == mods(range(2, 6), LLAMA.roles)
    assert z["up_gate"] == mods(range(8), ("q", "k", "v", "o", "down"))
    assert z["one_role"] == EVERY - mods(range(8), ("down",))
    assert z["mid_mlp"] == EVERY - mods(range(2, 6), mlp)
    assert z["either"] == mods((0, 1), LLAMA.roles) | mods(range(8), ("down",))
    assert z["keep_and_drop"] == (EVERY - mods(range(2, 6), LLAMA.roles)) | mods(range(8), ("q",))
    assert z["layer_list"] == mods((0, 7), LLAMA.roles)
    assert z["layer_int"] == mods((3,), attn)


def test_only_trained_modules_are_zeroed() -> None:
    """An MLP-only adapter (Table 4): keep layers 2-5 zeroes the MLP LoRA of the others."""
    trained = mods(range(8), NEOX.mlp_roles)
    z = zeroed_of({"mid": {"keep": {"layers": "2-5"}}, "no_lora": {"drop": "all"},
                   "up_only": {"keep": {"roles": ["up"]}}},
                  arch=NEOX, trained=trained)
    assert z["mid"] == mods([0, 1, 6, 7], ("up", "down"))
    assert z["no_lora"] == trained
    assert z["up_only"] == mods(range(8), ("down",))


def test_plain_role_names_work_like_the_architecture() -> None:
    by_names = resolve({"m": {"keep": {"component": "mlp"}}}, arch=list(NEOX.roles))
    by_arch = resolve({"m": {"keep": {"component": "mlp"}}}, arch=NEOX)
    assert by_names == by_arch


def test_params_round_trip() -> None:
    out = resolve({"either": {"drop": [{"layers": "0-1"}, {"roles": ["down"]}]}})
    params = out[1].to_params(LLAMA.roles)
    assert params["zeroed"][:3] == [[0, "q"], [0, "k"], [0, "v"]]
    assert Ablation.from_params(params) == out[1]
    assert Ablation.from_params({"name": "full", "zeroed": []}).is_full
    with pytest.raises(AblationError, match="\\[layer, role\\]"):
        Ablation.from_params({"name": "x", "zeroed": [["0", "q"]]})
    with pytest.raises(AblationError, match="'name' and 'zeroed'"):
        Ablation.from_params({"zeroed": []})


def test_params_round_trip_with_truncation() -> None:
    ablation = Ablation("svd_r2", frozenset(), 2)
    assert not ablation.is_full
    params = ablation.to_params()
    assert params == {"name": "svd_r2", "zeroed": [], "truncate_rank": 2}
    assert Ablation.from_params(params) == ablation
    assert "truncate_rank" not in Ablation("x", frozenset({(0, "q")})).to_params()
    for bad in (0, "2", 1.5, True):
        with pytest.raises(AblationError, match="ablation 'y': truncate_rank must be a positive int"):
            Ablation.from_params({"name": "y", "zeroed": [], "truncate_rank": bad})
    with pytest.raises(AblationError, match="ablation 'y': unknown key 'rank'"):
        Ablation.from_params({"name": "y", "zeroed": [], "rank": 2})


def test_resolve_sweeps_keeps_config_order() -> None:
    sweeps = {"b": {"ablations": {"x": {"drop": "all"}}}, "a": {"generate": "each_layer"}}
    out = resolve_sweeps(sweeps, num_layers=2, arch_roles=LLAMA)
    assert list(out) == ["b", "a"]
    assert [a.name for a in out["a"]] == [FULL, "drop_layer_00", "drop_layer_01"]


# --------------------------------------------------------------------------- generators


def test_each_layer() -> None:
    out = resolve(generate="each_layer", layers=3)
    assert [a.name for a in out] == [FULL, "drop_layer_00", "drop_layer_01", "drop_layer_02"]
    assert out[2].zeroed == mods((1,), LLAMA.roles)


def test_each_layer_role_uses_trained_roles_only() -> None:
    trained = mods(range(2), ("up", "down"))
    out = resolve(generate="each_layer_role", layers=2, arch=NEOX, trained=trained)
    assert [a.name for a in out] == [FULL, "drop_layer_00_up", "drop_layer_00_down",
                                     "drop_layer_01_up", "drop_layer_01_down"]
    assert out[3].zeroed == {(1, "up")}


def test_boundary() -> None:
    out = resolve(generate="boundary", layers=4)
    assert [a.name for a in out] == [FULL, "keep_layers_0_00", "keep_layers_0_01",
                                     "keep_layers_0_02"]
    assert out[1].zeroed == mods((1, 2, 3), LLAMA.roles)
    assert out[3].zeroed == mods((3,), LLAMA.roles)


def test_svd_generator() -> None:
    """One svd_r<k> per configured rank below the adapter's, in config order, zeroing nothing."""
    spec = {"generate": "svd", "ranks": [8, 4, 16, 2, 1]}
    out = resolve_sweep("c", spec, num_layers=2, arch_roles=LLAMA, rank=8)
    assert [a.name for a in out] == [FULL, "svd_r4", "svd_r2", "svd_r1"]
    assert [a.truncate_rank for a in out] == [None, 4, 2, 1]
    assert all(not a.zeroed for a in out)
    assert [a.name for a in resolve_sweep("c", spec, num_layers=2, arch_roles=LLAMA,
                                          rank=1)] == [FULL]  # nothing below rank 1
    mixed = resolve_sweep("c", {"ablations": {"no_lora": {"drop": "all"}},
                                "generate": ["svd", "each_layer"], "ranks": [2]},
                          num_layers=2, arch_roles=LLAMA, rank=4)
    assert [a.name for a in mixed] == [FULL, "no_lora", "svd_r2", "drop_layer_00",
                                       "drop_layer_01"]
    by_sweep = resolve_sweeps({"c": spec}, num_layers=2, arch_roles=LLAMA, rank=2)
    assert [a.name for a in by_sweep["c"]] == [FULL, "svd_r1"]


@pytest.mark.parametrize("spec, rank, message", [
    ({"generate": "svd", "ranks": [2]}, None,
     "sweeps.s.generate: svd needs the adapter's LoRA rank"),
    ({"generate": "svd"}, 8, "sweeps.s: 'generate: svd' needs 'ranks'"),
    ({"generate": "svd", "ranks": []}, 8, "sweeps.s.ranks must be a non-empty list of positive ints"),
    ({"generate": "svd", "ranks": [2, 0]}, 8, "sweeps.s.ranks must be a non-empty list"),
    ({"generate": "svd", "ranks": "2"}, 8, "sweeps.s.ranks must be a non-empty list"),
    ({"generate": "svd", "ranks": [2, 2]}, 8, "sweeps.s.ranks names a rank twice: [2, 2]"),
    ({"generate": "each_layer", "ranks": [2]}, 8,
     "sweeps.s.ranks is only read by 'generate: svd'"),
    ({"generate": "svd", "ranks": [2]}, 0, "sweeps.s: the adapter's LoRA rank must be a positive int"),
    ({"generate": "svd", "ranks": [2], "ablations": {"svd_r2": {"drop": "all"}}}, 8,
     "sweeps.s.generate.svd: duplicate ablation name 'svd_r2'"),
])
def test_svd_errors(spec, rank, message) -> None:
    with pytest.raises(AblationError, match=_re(message)):
        resolve_sweep("s", spec, num_layers=2, arch_roles=LLAMA, rank=rank)


def test_generators_skip_what_equals_full() -> None:
    trained = mods((0, 1), LLAMA.roles)  # the adapter has no LoRA in layers 2-3
    out = resolve(generate=["each_layer", "boundary"], layers=4, trained=trained)
    assert [a.name for a in out] == [FULL, "drop_layer_00", "drop_layer_01", "keep_layers_0_00"]


def test_named_then_generated() -> None:
    out = resolve({"no_lora": {"drop": "all"}}, generate=["boundary", "each_layer"], layers=2)
    assert [a.name for a in out] == [FULL, "no_lora", "keep_layers_0_00", "drop_layer_00",
                                     "drop_layer_01"]


# --------------------------------------------------------------------------- errors

P = "sweeps.s.ablations.x: "


@pytest.mark.parametrize("spec, message", [
    ({"keep": {"layers": "5-31"}}, P + "keep.layers: layer 31 out of range (model has 8 layers: 0-7)"),
    ({"drop": {"layers": "3-"}}, P + "drop.layers: bad layer range '3-'"),
    ({"keep": {"roles": ["gate"]}},
     P + "keep.roles: role 'gate' does not exist in architecture 'gpt_neox'; its roles are: "
         "qkv, o, up, down"),
    ({"keep": {"component": "ffn"}}, P + "keep.component must be one of attn, mlp, got 'ffn'"),
    ({"keep": {"layer": "1"}}, P + "keep: unknown key 'layer' (a selector has: component, layers, roles)"),
    ({"kepp": {"layers": "1"}}, P + "unknown key 'kepp' (an ablation has: keep, drop)"),
    ({}, P + "an ablation needs keep and/or drop"),
    ("all", P + "an ablation must be a mapping with keep and/or drop"),
    ({"keep": {}}, P + "keep is an empty selector"),
    ({"drop": []}, P + "drop is an empty list of selectors"),
    ({"drop": [{"layers": "0"}, {"role": "up"}]}, P + "drop[1]: unknown key 'role'"),
    ({"drop": 5}, P + "drop must be 'all', a selector mapping"),
    ({"keep": "all"}, P + "zeroes none of the adapter's trained modules"),
    ({"keep": {"component": "mlp"}, "drop": {"component": "mlp"}}, P + "keeps none of the adapter's"),
])
def test_spec_errors(spec, message) -> None:
    with pytest.raises(AblationError, match=_re(message)):
        resolve({"x": spec}, arch=NEOX)


def test_keep_selecting_nothing_trained() -> None:
    trained = mods(range(8), NEOX.mlp_roles)
    with pytest.raises(AblationError, match=_re(
            P + "keep selects none of the adapter's trained modules (16 modules: layers 0-7, "
                "roles down, up); to zero every LoRA update write 'drop: all'")):
        resolve({"x": {"keep": {"component": "attn"}}}, arch=NEOX, trained=trained)


def test_drop_selecting_nothing_trained() -> None:
    trained = mods(range(8), NEOX.mlp_roles)
    with pytest.raises(AblationError, match=_re(P + "drop selects none of the adapter's trained")):
        resolve({"x": {"drop": {"roles": ["qkv"]}}}, arch=NEOX, trained=trained)


def test_spec_zeroing_nothing() -> None:
    trained = mods(range(8), NEOX.mlp_roles)
    with pytest.raises(AblationError, match=_re(P + "zeroes none of the adapter's trained modules")):
        resolve({"x": {"keep": {"component": "mlp"}}}, arch=NEOX, trained=trained)


def test_reserved_and_duplicate_names() -> None:
    with pytest.raises(AblationError, match=_re("sweeps.s.ablations.full: the name 'full' is reserved")):
        resolve({"full": {"drop": "all"}})
    with pytest.raises(AblationError, match=_re(
            "sweeps.s.generate.each_layer: duplicate ablation name 'drop_layer_01' "
            "(also produced by sweeps.s.ablations.drop_layer_01)")):
        resolve({"drop_layer_01": {"drop": {"layers": "1"}}}, generate="each_layer", layers=2)
    with pytest.raises(AblationError, match=_re("sweeps.s.ablations.a b: ablation names must be")):
        resolve({"a b": {"drop": "all"}})


@pytest.mark.parametrize("spec, message", [
    ({"ablation": {}}, "sweeps.s: unknown key 'ablation' (a sweep has: ablations, generate, ranks)"),
    ({"generate": "every_layer"},
     ("sweeps.s.generate: unknown generator 'every_layer' (known: each_layer, each_layer_role, "
      "boundary, svd)")),
    ({"generate": ["boundary", "boundary"]}, "sweeps.s.generate names a generator twice"),
    ({"generate": {"x": 1}}, "sweeps.s.generate must be a generator name or a list"),
    ({"ablations": ["no_lora"]}, "sweeps.s.ablations must be a mapping"),
    ("x", "sweeps.s must be a mapping"),
])
def test_sweep_errors(spec, message) -> None:
    with pytest.raises(AblationError, match=_re(message)):
        resolve_sweep("s", spec, num_layers=8, arch_roles=LLAMA)


def test_bad_model_description() -> None:
    with pytest.raises(AblationError, match=_re("sweeps.s: trained modules [(9, 'q')] do not exist")):
        resolve({}, trained={(9, "q")})
    with pytest.raises(AblationError, match="unknown role names"):
        resolve({}, arch=["q", "wo"])
    with pytest.raises(AblationError, match="num_layers must be a positive int"):
        resolve({}, layers=0)


def test_error_is_a_value_error() -> None:
    assert issubclass(AblationError, ValueError)


def test_module_imports_no_torch() -> None:
    """The workflow resolves sweeps at DAG-build time: no torch import allowed."""
    code = "import sys, lorascope.core.ablation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
