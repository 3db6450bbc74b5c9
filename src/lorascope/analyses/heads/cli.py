"""The head ablation's subcommand: ``lorascope heads``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _heads(args: argparse.Namespace) -> None:
    from lorascope.analyses.heads.stage import heads
    from lorascope.cli import checkpoint_dirs

    heads(args.params, args.base, checkpoint_dirs(args.adapter), args.split_dir, args.out,
          args.summary, out_per_query=args.per_query)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import add_run_inputs

    p = add("heads", _heads, "Attention-head ablation: every head zeroed (or mean-ablated) in "
                             "turn, base model vs checkpoints.")
    add_run_inputs(p, "an extracted checkpoint: every ablated step and the run's last one")
    p.add_argument("--out", required=True,
                   help="heads Parquet (per step x layer x head x measure)")
    p.add_argument("--per-query", help="per-query heads Parquet")
    p.add_argument("--summary", required=True)
