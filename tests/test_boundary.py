"""Boundary-layer pruning: selection from sweep summaries, pruned adapter export (plain peft,
exact against the in-place ablation), and the pruned-vs-full comparison stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import as_tensor, build_adapter, build_base, prepare, stamp_checkpoint, write_toy_split

from lorascope.core import adapters
from lorascope.extraction import extract_adapter
from lorascope.core import fileio
from lorascope.analyses.boundary.selection import BoundaryError, select_boundary
from lorascope.analyses.boundary.export import export_pruned
from lorascope.analyses.boundary.prune import prune_boundary as prune
from lorascope.core.contracts import METRICS, SCORES, read_table

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 4
MEASURES = ["nDCG@10", "RR(rel=2)"]


# --------------------------------------------------------------------------- helpers


def sweep_summary(path: Path, values: dict[str, float], *, num_layers: int = LAYERS,
                  split: str = "validation", measure: str = "nDCG@10", **run) -> Path:
    """An evaluate summary of a boundary sweep: ``values`` by ablation name."""
    roles = ["q", "up"]
    ablations = {}
    for name, value in values.items():
        b = num_layers - 1 if name == "full" else int(name.rsplit("_", 1)[1])
        zeroed = [[layer, r] for layer in range(b + 1, num_layers) for r in roles]
        ablations[name] = {"metrics": {measure: value}, "zeroed": zeroed}
    fileio.write_json(path, {"model": "tiny", "adapter": "r4-all", "step": 10,
                             "sweep": "boundary", "split": split, **run,
                             "ablations": ablations})
    return path


def curve(*values: float) -> dict[str, float]:
    """Boundary values for b = 0..L-1 (the last is ``full``)."""
    names = [f"keep_layers_0_{b:02d}" for b in range(len(values) - 1)] + ["full"]
    return dict(zip(names, values))


def prepared_base(root: Path, model_type: str) -> Path:
    """A tiny random base model run through prepare_base (so it has a base manifest)."""
    from lorascope.models.base import BaseModelSpec, prepare_base

    raw = build_base(root / f"raw-{model_type}", model_type, layers=LAYERS)
    out = root / f"base-{model_type}"
    prepare_base(BaseModelSpec("local", path=str(raw), copy_weights=True), out, progress=False)
    return out


def extracted_adapter(root: Path, base: Path, name: str, **kwargs) -> Path:
    """A random adapter extracted like the workflow does (manifest with sha256s)."""
    train = root / f"train-{name}"
    stamp_checkpoint(build_adapter(base, train / "step-10", **kwargs), base, 10)
    out = root / f"adapter-{name}"
    extract_adapter({"model": "tiny", "adapter": name, "step": 10}, train, base, out)
    return out


def plain_peft(base: Path, adapter: Path):
    """Base + adapter with nothing but transformers and peft's own loader."""
    import torch
    from peft import PeftModel

    from lorascope.models.reranker import load_reranker

    torch.manual_seed(0)
    model, tokenizer, arch = load_reranker(base)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer, arch


def lora_numel(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("boundary")
    llama = prepared_base(root, "llama")
    neox = prepared_base(root, "gpt_neox")
    return {
        "root": root,
        "llama": (llama, extracted_adapter(root, llama, "llama")),
        "gpt_neox-dora": (neox, extracted_adapter(root, neox, "neox-dora", use_dora=True)),
    }


@pytest.fixture(scope="module")
def split(models) -> Path:
    out = models["root"] / "split"
    write_toy_split(out)
    return out


# --------------------------------------------------------------------------- selection


def test_selection_best_and_ties_to_smallest_b(tmp_path) -> None:
    path = sweep_summary(tmp_path / "s.json", curve(0.30, 0.52, 0.52, 0.52))
    sel = select_boundary(path, "nDCG@10", num_layers=LAYERS)
    assert (sel.b, sel.ablation, sel.value, sel.num_layers) == (1, "keep_layers_0_01", 0.52, 4)
    assert [(c.b, c.ablation, c.value) for c in sel.candidates] == [
        (0, "keep_layers_0_00", 0.30), (1, "keep_layers_0_01", 0.52),
        (2, "keep_layers_0_02", 0.52), (3, "full", 0.52)]
    # a value one ulp higher is not a tie
    higher = sweep_summary(tmp_path / "h.json", curve(0.30, 0.52, 0.52, 0.52 + 2 ** -52))
    assert select_boundary(higher, "nDCG@10").b == 3
    # the depth is inferred from the deepest zeroed layer when not given
    assert select_boundary(path, "nDCG@10").num_layers == LAYERS
    as_json = json.loads(json.dumps(sel.to_dict()))
    assert as_json["b"] == 1 and len(as_json["candidates"]) == 4
    assert as_json["run"] == {"model": "tiny", "adapter": "r4-all", "step": 10,
                              "sweep": "boundary", "splits": ["validation"]}


def test_selection_over_several_summaries_uses_the_mean(tmp_path) -> None:
    a = sweep_summary(tmp_path / "a.json", curve(0.2, 0.6, 0.4, 0.5), split="v1")
    b = sweep_summary(tmp_path / "b.json", curve(0.2, 0.2, 0.6, 0.5), split="v2")
    sel = select_boundary([a, b], "nDCG@10")
    assert sel.b == 2 and sel.value == pytest.approx(0.5)
    assert sel.candidates[1].values == (0.6, 0.2)
    assert sel.run["splits"] == ["v1", "v2"]
    other = sweep_summary(tmp_path / "c.json", curve(0.2, 0.6, 0.4, 0.5), adapter="r8-all")
    with pytest.raises(BoundaryError, match="c.json: summary of run"):
        select_boundary([a, other], "nDCG@10")


def test_selection_errors_name_the_file(tmp_path) -> None:
    no_boundary = tmp_path / "layers.json"
    fileio.write_json(no_boundary, {"ablations": {"full": {"metrics": {"nDCG@10": 0.5}},
                                                  "drop_layer_00": {"metrics": {"nDCG@10": 0.4}}}})
    with pytest.raises(BoundaryError, match=r"layers\.json: no boundary ablations"):
        select_boundary(no_boundary, "nDCG@10")
    path = sweep_summary(tmp_path / "deep.json", curve(0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                         num_layers=6)
    with pytest.raises(BoundaryError, match=r"deep\.json: boundary b = 4 out of range for a "
                                            r"model of 4 layers"):
        select_boundary(path, "nDCG@10", num_layers=LAYERS)
    with pytest.raises(BoundaryError, match=r"deep\.json: ablation 'keep_layers_0_00' has no "
                                            r"'AP\(rel=2\)' metric \(it has: nDCG@10\)"):
        select_boundary(path, "AP(rel=2)")
    no_full = tmp_path / "nofull.json"
    fileio.write_json(no_full, {"ablations": {"keep_layers_0_00": {"metrics": {"nDCG@10": 1}}}})
    with pytest.raises(BoundaryError, match=r"nofull\.json: no 'full' ablation"):
        select_boundary(no_full, "nDCG@10")
    with pytest.raises(BoundaryError, match=r"missing\.json: no such boundary summary"):
        select_boundary(tmp_path / "missing.json", "nDCG@10")


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("which", ["llama", "gpt_neox-dora"])
def test_pruned_adapter_equals_in_place_ablation(models, which, tmp_path) -> None:
    """The exported adapter, loaded by plain peft, scores exactly like keep_layers_0_b."""
    import torch

    from lorascope.models.adapted import load_adapted
    from lorascope.core.switching import lora_modules, zeroed

    base, adapter = models[which]
    b = 1
    manifest = export_pruned(adapter, base, b, tmp_path / "pruned")
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    adapters.verify(tmp_path / "pruned", base)  # the manifest checks like an extracted one

    pruned, tokenizer, arch = plain_peft(base, tmp_path / "pruned")
    full, _, _ = load_adapted(base, adapter)
    kept = set(lora_modules(pruned, arch))
    trained = set(lora_modules(full, arch))
    assert kept == {m for m in trained if m[0] <= b}
    dropped = trained - kept
    assert sorted(map(tuple, manifest["pruned"]["modules_dropped"])) == sorted(dropped)
    assert manifest["pruned"]["layers_dropped"] == [2, 3]

    prepared = prepare(tokenizer, arch)
    with zeroed(full, arch, dropped):
        ablated = as_tensor(prepared.score(full, progress=False))
    got = as_tensor(prepared.score(pruned, progress=False))
    assert torch.allclose(got, ablated, rtol=0, atol=1e-6), (got - ablated).abs().max()
    everything = as_tensor(prepared.score(full, progress=False))
    assert (got - everything).abs().max() > 1e-3  # pruning did change something

    # the trained head came along: same head weights as the full adapter's
    head = {n: p for n, p in pruned.named_parameters() if "modules_to_save" in n}
    assert head and all(torch.equal(p, dict(full.named_parameters())[n])
                        for n, p in head.items())


def test_fraction_removed_is_the_parameter_ratio(models, tmp_path) -> None:
    from lorascope.models.adapted import load_adapted

    base, adapter = models["llama"]
    full, _, _ = load_adapted(base, adapter)
    total = lora_numel(full)
    for b in (0, 2):
        manifest = export_pruned(adapter, base, b, tmp_path / f"b{b}")
        kept = lora_numel(plain_peft(base, tmp_path / f"b{b}")[0])
        params = manifest["pruned"]["params"]
        assert (params["lora_total"], params["lora_kept"]) == (total, kept)
        assert params["lora_removed"] == total - kept
        assert params["fraction_removed"] == pytest.approx((total - kept) / total, rel=1e-12)
        assert params["fraction_removed"] == pytest.approx((LAYERS - 1 - b) / LAYERS)


def test_last_layer_exports_the_original(models, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    base, adapter = models["gpt_neox-dora"]
    manifest = export_pruned(adapter, base, LAYERS - 1, tmp_path / "same")
    original = adapters.read_manifest(adapter)
    assert manifest["files"] == original["files"]  # byte-identical files
    assert manifest["source"]["files"] == original["files"]
    assert manifest["pruned"]["modules_dropped"] == []
    assert manifest["pruned"]["params"]["fraction_removed"] == 0.0
    a = load_file(adapter / "adapter_model.safetensors")
    b = load_file(tmp_path / "same" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert manifest["step"] == original["step"] == 10


def test_export_refuses_bad_b(models, tmp_path) -> None:
    base, adapter = models["llama"]
    for b in (LAYERS, -1):
        with pytest.raises(BoundaryError, match=rf"b = {b} out of range: .*base_manifest\.json "
                                                rf"gives 4 layers, so 0 <= b <= 3"):
            export_pruned(adapter, base, b, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_refuses_an_adapter_without_head(models, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    base, adapter = models["llama"]
    bare = tmp_path / "bare"
    bare.mkdir()
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".lora_" in k},
              str(bare / "adapter_model.safetensors"), metadata={"format": "pt"})
    (bare / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    with pytest.raises(BoundaryError, match=r"bare/adapter_model\.safetensors: no trained "
                                            r"score head"):
        export_pruned(bare, base, 1, tmp_path / "out")


# --------------------------------------------------------------------------- stages


def test_prune_stage_writes_selection(models, tmp_path) -> None:
    base, adapter = models["llama"]
    summary = sweep_summary(tmp_path / "summary.json", curve(0.1, 0.1, 0.7, 0.6))
    out = tmp_path / "pruned"
    manifest = prune({"measure": "nDCG@10", "model": "tiny"}, summary, adapter, base, out)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["b"] == manifest["pruned"]["b"] == 2
    assert selection["provenance"]["stage"] == "prune_boundary"
    assert manifest["selection"] == {"measure": "nDCG@10", "value": 0.7,
                                     "sources": [str(summary)]}
    assert manifest["params"] == {"measure": "nDCG@10", "model": "tiny"}
    with pytest.raises(BoundaryError, match="'measure' must be a metric name"):
        prune({}, summary, adapter, base, tmp_path / "y")


def test_compare_stage(models, split, tmp_path) -> None:
    from lorascope.analyses.boundary.compare import compare_boundary as compare

    base, adapter = models["llama"]
    pruned = tmp_path / "pruned"
    export_pruned(adapter, base, 1, pruned)
    params = {"metrics": MEASURES, "significance": {"test": "wilcoxon", "correction": "holm",
                                                    "alpha": 0.05},
              "scoring": {"batch_tokens": 256, "max_length": 64},
              "timing": {"repeats": 2, "warmup_batches": 1},
              "model": "tiny", "adapter": "r4-all", "step": 10, "sweep": "boundary_pruned",
              "split": "toy"}
    out = [tmp_path / "o" / f for f in ("scores.parquet", "metrics.parquet", "summary.json")]
    summary = compare(params, base, adapter, pruned, split, *out, progress=False)
    assert json.loads(out[2].read_text()) == json.loads(json.dumps(summary))

    scores = read_table(out[0], SCORES).to_pylist()
    assert [r["ablation"] for r in scores].count("full") == 40
    assert [r["ablation"] for r in scores].count("pruned") == 40
    rows = read_table(out[1], METRICS).to_pylist()
    assert len(rows) == 2 * 5 * len(MEASURES)

    assert summary["ablation_order"] == ["full", "pruned"]
    assert summary["sweep"] == "boundary_pruned" and summary["split"] == "toy"
    full, cut = summary["ablations"]["full"], summary["ablations"]["pruned"]
    assert cut["zeroed_modules"] == 2 * 7
    for m in MEASURES:
        assert cut["delta"][m] == pytest.approx(cut["metrics"][m] - full["metrics"][m])
        assert 0.0 <= cut["p_value"][m] <= 1.0 and full["p_value"][m] is None
        assert cut["significant"][m] == (cut["p_adjusted"][m] < 0.05)
    for entry in (full, cut):
        assert len(entry["seconds_all"]) == 2 and entry["seconds"] == min(entry["seconds_all"])
        assert entry["pairs_per_second"] == pytest.approx(40 / entry["seconds"], rel=1e-3)
    boundary = summary["boundary"]
    assert (boundary["b"], boundary["layers"], boundary["layers_dropped"]) == (1, 4, [2, 3])
    assert boundary["params_removed_fraction"] == pytest.approx(0.5)
    assert boundary["speedup"] == pytest.approx(full["seconds"] / cut["seconds"], rel=1e-3)
    assert boundary["ablation_check"]["max_abs_diff"] <= 1e-6
    assert full["lora_params"] == 2 * cut["lora_params"]
    assert summary["provenance"]["stage"] == "compare_boundary"
    assert summary["provenance"]["params"] == params

    # the full rows are the adapter's own scores, the pruned rows differ from them
    by = {}
    for r in scores:
        by.setdefault(r["ablation"], {})[(r["qid"], r["docid"])] = r["score"]
    assert max(abs(by["full"][k] - by["pruned"][k]) for k in by["full"]) > 1e-3


def test_compare_refuses_a_pruned_adapter_of_another_adapter(models, split, tmp_path) -> None:
    from lorascope.analyses.boundary.compare import compare_boundary as compare

    base, adapter = models["llama"]
    other = extracted_adapter(tmp_path, base, "other", seed=5)
    export_pruned(other, base, 1, tmp_path / "pruned")
    out = [tmp_path / f for f in ("s.parquet", "m.parquet", "summary.json")]
    with pytest.raises(adapters.AdapterMismatch, match="was pruned from another adapter"):
        compare({"metrics": MEASURES}, base, adapter, tmp_path / "pruned", split, *out,
                progress=False)
    assert not any(p.exists() for p in out)
