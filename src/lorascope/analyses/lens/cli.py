"""The lens's subcommand: ``lorascope lens``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _lens(args: argparse.Namespace) -> None:
    from lorascope.analyses.lens.stage import lens
    from lorascope.cli import checkpoint_dirs

    lens(args.params, args.base, checkpoint_dirs(args.adapter), args.split_dir, args.out,
         args.summary, out_per_query=args.per_query)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import add_run_inputs

    p = add("lens", _lens, "Relevance lens: the score head read out at every layer, per checkpoint.")
    add_run_inputs(p, "an extracted checkpoint (repeat for every step)")
    p.add_argument("--out", required=True, help="lens Parquet (mean per step x layer x measure)")
    p.add_argument("--per-query", help="per-query lens Parquet")
    p.add_argument("--summary", required=True)
