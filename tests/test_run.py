"""The checkpoints of one run as the base-vs-checkpoints analyses read them
(:mod:`lorascope.models.run`), on a tiny LLaMA and BERT with random LoRA checkpoints.

Pins: :func:`~lorascope.models.run.visit` visits the base (step 0) first, then the last
checkpoint as loaded, then the others ascending; step 0's scores are bitwise those of a fresh
load of the last checkpoint with every ``lora_B`` zeroed (LoRA off, the last head), each
checkpoint's bitwise those of a fresh load of it, and LoRA is back on after step 0 (also when
the caller stops during step 0); checkpoints of different runs, non-positive or bool steps,
missing ``adapter_config.json`` and steps with no checkpoint are refused with errors naming
the stage.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import closing
from pathlib import Path

import pytest
from helpers import as_tensor, build_adapter, load_adapted, prepare, reference_model

from lorascope.models.run import (
    BASE_STEP,
    Run,
    check_one_run,
    checked_checkpoints,
    load_run,
    read_run,
    visit,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (5, 10, 20)


@pytest.fixture(scope="module")
def runs(bases, tmp_path_factory) -> dict:
    """Per architecture, three checkpoints of one run (steps 5, 10, 20; distinct weights and
    heads)."""
    root = tmp_path_factory.mktemp("run")
    return {t: {s: build_adapter(bases[t], root / t / f"step-{s}", seed=s) for s in STEPS}
            for t in ("llama", "bert")}


def _scores(prepared, model):
    return as_tensor(prepared.score(model, progress=False))


def _all_lora(model, arch):
    from lorascope.core.switching import lora_modules

    return list(lora_modules(model, arch))


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_visit_order_and_states(bases, runs, model_type) -> None:
    import torch

    base, checkpoints = bases[model_type], runs[model_type]
    run = read_run(checkpoints, base, "test")
    assert (run.last_step, run.last_dir) == (20, checkpoints[20])
    assert run.original_base and run.manifests == {5: None, 10: None, 20: None}
    model, tokenizer, arch, seconds = load_run(run, base, dtype="float32", device="cpu",
                                               attention=None)
    assert seconds > 0
    prepared = prepare(tokenizer, arch)
    fresh = {}
    for step in STEPS:
        loaded, _, _ = load_adapted(base, checkpoints[step])
        fresh[step] = _scores(prepared, loaded)
    lora_off = reference_model(base, checkpoints[20], _all_lora(model, arch))
    fresh[BASE_STEP] = _scores(prepared, lora_off)
    assert (fresh[BASE_STEP] - fresh[20]).abs().max() > 1e-3  # LoRA off changes the scores

    seen = []
    for step, swap_seconds in visit(model, arch, run, [10, 5, 20], "cpu"):
        seen.append(step)
        assert torch.equal(_scores(prepared, model), fresh[step]), step
        assert swap_seconds >= 0 and (swap_seconds == 0.0) == (step == BASE_STEP)
    assert seen == [BASE_STEP, 20, 5, 10]  # base, the last as loaded, the others ascending
    # the model holds the last step visited; visiting again goes back to it first
    assert torch.equal(_scores(prepared, model), fresh[10])


def test_visit_restores_lora_and_checks_steps(bases, runs) -> None:
    import torch

    base, checkpoints = bases["llama"], runs["llama"]
    run = read_run(checkpoints, base, "test")
    model, tokenizer, arch, _ = load_run(run, base, dtype="float32", device="cpu",
                                         attention=None)
    prepared = prepare(tokenizer, arch)
    last = _scores(prepared, model)
    # a caller that stops during step 0 (closing the generator) gets LoRA back at once
    with closing(visit(model, arch, run, [20], "cpu")) as steps:
        step, _ = next(steps)
        assert step == BASE_STEP and not torch.equal(_scores(prepared, model), last)
    assert torch.equal(_scores(prepared, model), last)
    # an exception inside the caller's loop, too
    with pytest.raises(RuntimeError, match="stop"):
        with closing(visit(model, arch, run, [20], "cpu")) as steps:
            for step, _ in steps:
                raise RuntimeError("stop")
    assert torch.equal(_scores(prepared, model), last)
    # base=False: no step 0; a step asked twice is visited once; the last checkpoint left out
    assert [s for s, _ in visit(model, arch, run, [20, 20], "cpu", base=False)] == [20]
    assert [s for s, _ in visit(model, arch, run, [5], "cpu", base=False)] == [5]
    fresh, _, _ = load_adapted(base, checkpoints[5])
    assert torch.equal(_scores(prepared, model), _scores(prepared, fresh))
    with pytest.raises(ValueError, match=r"lens params: 'steps' names \[7\] but no checkpoint "
                                         r"directory was given for them \(given: \[5, 10, 20\]\)"):
        next(visit(model, arch, run, [5, 7], "cpu", stage="lens"))


def test_checkpoints_of_different_runs_are_refused(bases, runs, tmp_path) -> None:
    base, checkpoints = bases["llama"], runs["llama"]
    mlp = build_adapter(base, tmp_path / "mlp", targets="mlp")
    with pytest.raises(ValueError, match=r"heads: checkpoints .*step-5 \(step 5\) and .*mlp "
                                         r"\(step 30\) have different adapter configs "
                                         r"\(.*target_modules.*\); it compares checkpoints of "
                                         "one training run"):
        read_run({5: checkpoints[5], 30: mlp}, base, "heads")
    # one key differs: named alone
    edited = tmp_path / "edited"
    shutil.copytree(checkpoints[10], edited)
    config = json.loads((edited / "adapter_config.json").read_text())
    config["lora_alpha"] = 99
    (edited / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"different adapter configs \(lora_alpha\)"):
        check_one_run(checked_checkpoints({5: checkpoints[5], 10: edited}, "x"), "x")


def test_base_rewriting_init_is_flagged(bases, runs, tmp_path, caplog) -> None:
    copies = {}
    for step in (5, 10):
        copies[step] = tmp_path / f"step-{step}"
        shutil.copytree(runs["llama"][step], copies[step])
        path = copies[step] / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "init_lora_weights": "pissa"}))
    with caplog.at_level(logging.WARNING, logger="lorascope.models.run"):
        run = read_run(copies, bases["llama"], "lens")
    assert not run.original_base and "rewrites the base weights" in caplog.text


@pytest.mark.parametrize(("steps", "error", "message"), [
    ({}, ValueError, "probing: no adapter checkpoints given"),
    ({0: "step-5"}, ValueError, r"probing: checkpoint step 0 \(.*\) must be an int > 0; step 0 "
                                "is the base model"),
    ({-5: "step-5"}, ValueError, "checkpoint step -5 .* must be an int > 0"),
    ({True: "step-5"}, ValueError, "checkpoint step True .* must be an int > 0"),
    ({"5": "step-5"}, ValueError, "checkpoint step '5' .* must be an int > 0"),
    ({5.0: "step-5"}, ValueError, r"checkpoint step 5\.0 .* must be an int > 0"),
    ({5: "missing"}, FileNotFoundError, r"probing: .*missing \(step 5\) is no peft adapter "
                                        r"directory \(no adapter_config.json\)"),
    ({5: "empty"}, FileNotFoundError, r"empty \(step 5\) is no peft adapter directory"),
])
def test_checked_checkpoints_refusals(tmp_path, steps, error, message) -> None:
    (tmp_path / "step-5").mkdir()
    (tmp_path / "step-5" / "adapter_config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(error, match=message):
        checked_checkpoints({k: tmp_path / v for k, v in steps.items()}, "probing")


def test_checked_checkpoints_sorts_by_step(tmp_path) -> None:
    dirs = {}
    for step in (20, 5, 10):
        dirs[step] = tmp_path / f"s{step}"
        dirs[step].mkdir()
        (dirs[step] / "adapter_config.json").write_text("{}")
    assert checked_checkpoints({s: str(d) for s, d in dirs.items()}, "x") == [
        (5, dirs[5]), (10, dirs[10]), (20, dirs[20])]


def test_check_steps() -> None:
    run = Run(checkpoints=((5, Path("a")), (10, Path("b")), (20, Path("c"))),
              adapter_config={}, manifests={}, original_base=True)
    assert (run.last_step, run.last_dir) == (20, Path("c"))
    assert run.dirs == {5: Path("a"), 10: Path("b"), 20: Path("c")}
    assert run.check_steps([20, 5, 5], "heads") == [5, 20]
    assert run.check_steps([], "heads") == []
    with pytest.raises(ValueError, match=r"heads params: 'steps' names \[0, 7\] but no "
                                         r"checkpoint directory was given for them "
                                         r"\(given: \[5, 10, 20\]\)"):
        run.check_steps([7, 5, 0], "heads")
