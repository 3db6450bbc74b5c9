"""The probes' subcommand: ``lorascope probing``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _probing(args: argparse.Namespace) -> None:
    from lorascope.analyses.probing.stage import probing
    from lorascope.cli import checkpoint_dirs

    probing(args.params, args.base, checkpoint_dirs(args.adapter), args.split_dir, args.out,
            args.per_fold, args.summary)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import add_run_inputs

    p = add("probing", _probing,
            "Linear probes of IR features (BM25, tf, coverage, length) at every layer.")
    add_run_inputs(p, "an extracted checkpoint (repeat: every probed step and the last)")
    p.add_argument("--out", required=True, help="probing Parquet (R² per step x layer x feature)")
    p.add_argument("--per-fold", required=True, help="per-fold probing Parquet")
    p.add_argument("--summary", required=True)
