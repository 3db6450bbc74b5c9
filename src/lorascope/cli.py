"""Command-line entry points, one subcommand per workflow stage.

Each subcommand wires paths and its config slice (``--params``, JSON) into one function of the
package; heavy libraries are imported inside the subcommand, so ``lorascope --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("lorascope")


def params_arg(text: str) -> dict[str, Any]:
    """``--params``: a JSON object (a rule's config slice)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--params is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def checkpoint_dirs(values: Sequence[str]) -> dict[int, str]:
    """``--adapter STEP=DIR`` arguments as ``{step: dir}``."""
    out: dict[int, str] = {}
    for value in values:
        step, sep, path = value.partition("=")
        if not sep or not step.isdigit():
            raise ValueError(f"--adapter {value!r}: expected STEP=DIR, e.g. 100=results/.../step-100")
        out[int(step)] = path
    return out


def add_run_inputs(p: argparse.ArgumentParser, adapter_help: str) -> None:
    """The inputs of a stage that reads several checkpoints of one run on a split:
    ``--params``, ``--base``, ``--adapter STEP=DIR`` (repeated) and ``--split-dir``."""
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", action="append", required=True, metavar="STEP=DIR",
                   help=adapter_help)
    p.add_argument("--split-dir", required=True)


def _validate_config(args: argparse.Namespace) -> None:
    from lorascope.study.parse import ConfigError, load_study_file
    from lorascope.study.plan import check_plan

    study = load_study_file(args.config)
    try:
        check_plan(study)  # every check the workflow runs before its first job
    except ConfigError as err:
        raise ConfigError(f"{args.config}: {err}") from err
    print(
        f"{args.config}: study {study.name!r} is valid (hash {study.hash}; "
        f"{len(study.models)} models, {len(study.splits)} splits)"
    )


def _digest(args: argparse.Namespace) -> None:
    from lorascope.digest import main as digest

    rc = digest(args.results, args.out, args.against)
    if rc:
        raise SystemExit(rc)


def _build_embedded(args: argparse.Namespace) -> None:
    from lorascope.data.embedded import build

    build(args.source, args.out)


def _prepare_split(args: argparse.Namespace) -> None:
    from lorascope.data.prepare import prepare_split

    prepare_split(args.params, args.out)


def _prepare_train(args: argparse.Namespace) -> None:
    from lorascope.data.prepare import prepare_train

    prepare_train(args.params, args.out)


def _first_stage(args: argparse.Namespace) -> None:
    from lorascope.first_stage import evaluate_first_stage

    evaluate_first_stage(args.params, args.split_dir, args.metrics, args.summary, args.run)


def _prepare_base(args: argparse.Namespace) -> None:
    from lorascope.models.stage import prepare_base

    prepare_base(args.params, args.out, args.train_groups)


def _train(args: argparse.Namespace) -> None:
    from lorascope.training.stage import train_lora

    train_lora(args.params, args.base, args.train_groups, args.work_dir, args.out, args.code)


def _extract(args: argparse.Namespace) -> None:
    from lorascope.extraction import extract_adapter

    extract_adapter(args.params, args.train_dir, args.base, args.out)


def _import(args: argparse.Namespace) -> None:
    from lorascope.importing import import_adapter

    import_adapter(args.params, args.base, args.out)


def _evaluate(args: argparse.Namespace) -> None:
    from lorascope.evaluate import evaluate

    evaluate(args.params, args.base, args.adapter, args.split_dir, args.scores, args.metrics, args.summary,
             args.runs)


def _evaluate_checkpoints(args: argparse.Namespace) -> None:
    from lorascope.curves import evaluate_checkpoints

    evaluate_checkpoints(args.params, args.base, checkpoint_dirs(args.adapter), args.split_dir,
                         args.out)


def _zero_shot(args: argparse.Namespace) -> None:
    from lorascope.zero_shot import evaluate_zero_shot

    evaluate_zero_shot(args.params, args.base, args.split_dir, args.metrics, args.summary, args.run)


def die_with_parent(parent: int = 0) -> None:
    """Have the kernel end this process (SIGTERM) when its parent ends - Snakemake, since the
    rules ``exec`` lorascope - however the parent ends, SIGKILL included. A trainer that
    outlived a killed Snakemake would otherwise keep writing into a work directory that a
    rerun uses too. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op.

    ``parent`` is the PID the caller started this process under (the rules pass the shell's
    ``$PPID``): if that process has already ended - in the second or two of imports before
    this runs, or before the request took effect - this process exits instead of starting.
    0: the parent found at this call."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    parent = parent or os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    elif os.getppid() != parent:  # the parent ended before the request took effect
        raise SystemExit(f"lorascope: the parent process {parent} ended; not starting")


def build_parser() -> argparse.ArgumentParser:
    from lorascope.analyses.registry import ANALYSES, load

    parser = argparse.ArgumentParser(prog="lorascope", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (the rule's threads)"
    )
    parser.add_argument(
        "--die-with-parent",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="PID",
        help="end this process when the process that started it (PID, e.g. the shell's $PPID; "
        "default: the parent at start-up) ends (Linux; how the workflow's jobs run: a job never "
        "outlives a killed Snakemake)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs this job may use (the rule's gpu resource): sets CUDA_VISIBLE_DEVICES to "
        "free devices unless a scheduler already did (see lorascope.core.devices)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("validate-config", _validate_config, "Validate a study config file and exit.")
    p.add_argument("config")

    p = add("digest", _digest, "Content digests of a study's tables and adapters (provenance "
            "and timings left out): write them, or compare two runs bit for bit.")
    p.add_argument("results", help="a study's results folder (results/<study>)")
    p.add_argument("--out", help="write the digests (JSON) here instead of stdout")
    p.add_argument("--against", help="digests of an earlier run: list what differs, exit 1 if any")

    p = add("build-embedded-data", _build_embedded, "Rebuild the shipped TREC DL tables.")
    p.add_argument("--from", dest="source", required=True, help="folder with the TREC DL files")
    p.add_argument("--out", required=True, help="output folder (the package's resources/trec-dl)")

    p = add("prepare-split", _prepare_split, "Write one reranking split (queries, candidates, qrels).")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--out", required=True, help="split directory")

    p = add("prepare-train", _prepare_train, "Write the training groups.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--out", required=True, help="train_groups.parquet path")

    p = add("evaluate-first-stage", _first_stage, "Evaluate the first-stage ranking of a split.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--metrics", required=True, help="per-query metrics Parquet")
    p.add_argument("--summary", required=True, help="summary JSON")
    p.add_argument("--run", metavar="FILE", help="the ranking's TREC run (default: "
                   "first_stage.run beside --metrics)")
    p = add("prepare-base", _prepare_base, "Prepare a base model directory (hub/local/package/GGUF/tiny).")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--out", required=True, help="base model directory")
    p.add_argument("--train-groups", help="training groups (tiny models pretrain on their passages)")

    p = add("train", _train, "Train one LoRA reranker, saving checkpoints at the configured steps.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True, help="prepared base model directory")
    p.add_argument("--train-groups", required=True)
    p.add_argument("--work-dir", required=True, help="resumable working directory (kept on failure)")
    p.add_argument("--out", required=True, help="published run directory (checkpoints + log)")
    p.add_argument("--code", help="the stage's code version (the rule's params.code), part of "
                   "the run's fingerprint: a state of other code is never resumed")

    p = add("extract-adapter", _extract, "Extract one checkpoint as a standalone adapter + manifest.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--train-dir", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p = add("import-adapter", _import, "Check a LoRA adapter trained elsewhere against the base "
            "model and write it as an extracted adapter + manifest.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p = add("evaluate", _evaluate, "Score a split under every ablation of a sweep (one checkpoint).")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True, help="extracted adapter directory")
    p.add_argument("--split-dir", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--runs", metavar="DIR", help="folder of TREC runs, <ablation>.run each "
                   "(default: runs/ beside --scores)")

    p = add("evaluate-checkpoints", _evaluate_checkpoints,
            "Score the full adapter of every checkpoint of a run on a split (one model load).")
    add_run_inputs(p, "an extracted checkpoint (repeat for every step)")
    p.add_argument("--out", required=True, help="output folder (one step-<N>/ per checkpoint, "
                   "with its scores, metrics, summary and TREC run full.run)")

    p = add("evaluate-zero-shot", _zero_shot,
            "Rank a split with the base model alone (e.g. a bi-encoder's cosine): the zero-shot row.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--metrics", required=True, help="per-query metrics Parquet")
    p.add_argument("--summary", required=True, help="summary JSON")
    p.add_argument("--run", metavar="FILE", help="the ranking's TREC run (default: "
                   "zero_shot.run beside --metrics)")

    for analysis in ANALYSES:  # each analysis adds its stages' subcommands
        load(analysis.module("cli"), "add_commands")(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before torch is imported (its thread pools read these at import). Idle OpenMP threads
    # sleep instead of spinning: with spinning, a 2-thread job on a 2-core machine that also
    # runs anything else was measured 14x slower (5.1 s vs 0.37 s per tiny-model step).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)
    try:
        if args.gpus is not None:  # before anything imports torch
            from lorascope.core.devices import claim

            claim(args.gpus)
        args.func(args)
    except Exception as err:
        # Bad input (lorascope's own errors, bad values, missing files): one clear line.
        # Anything else is a bug somewhere: keep its traceback.
        if not (type(err).__module__.startswith("lorascope") or isinstance(err, (ValueError, OSError))):
            raise
        log.debug("failed", exc_info=True)
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
