"""The anatomy's subcommand: ``lorascope anatomy``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _anatomy(args: argparse.Namespace) -> None:
    from lorascope.analyses.anatomy.stage import anatomy
    from lorascope.cli import checkpoint_dirs

    anatomy(args.params, checkpoint_dirs(args.adapter), args.out, base_dir=args.base)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import params_arg

    p = add("anatomy", _anatomy,
            "LoRA update anatomy (norms, spectra) of every checkpoint of a run.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--adapter", action="append", required=True, metavar="STEP=DIR",
                   help="an extracted checkpoint (repeat for every step)")
    p.add_argument("--base", help="base model directory (DoRA magnitude shifts)")
    p.add_argument("--out", required=True, help="anatomy Parquet")
