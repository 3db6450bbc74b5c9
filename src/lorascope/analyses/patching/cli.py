"""The patching analysis's subcommand: ``lorascope patching``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _patching(args: argparse.Namespace) -> None:
    from lorascope.analyses.patching.stage import patching
    from lorascope.cli import checkpoint_dirs

    patching(args.params, args.base, checkpoint_dirs(args.adapter), args.split_dir, args.out,
             args.heads, args.pairs, args.summary)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import add_run_inputs

    p = add("patching", _patching,
            "Axiomatic perturbations + activation patching (residual stream, heads).")
    add_run_inputs(p, "an extracted checkpoint (repeat for every step)")
    p.add_argument("--out", required=True, help="share per step x perturbation x layer x group")
    p.add_argument("--heads", required=True, help="share per step x perturbation x layer x head")
    p.add_argument("--pairs", required=True, help="every pair's scores")
    p.add_argument("--summary", required=True)
