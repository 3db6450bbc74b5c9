"""Boundary pruning's subcommands: ``lorascope prune-boundary`` and ``compare-boundary``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _prune(args: argparse.Namespace) -> None:
    from lorascope.analyses.boundary.prune import prune_boundary

    prune_boundary(args.params, args.boundary_summary, args.adapter, args.base, args.out)


def _compare(args: argparse.Namespace) -> None:
    from lorascope.analyses.boundary.compare import compare_boundary

    compare_boundary(args.params, args.base, args.adapter, args.pruned, args.split_dir,
                     args.scores, args.metrics, args.summary)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import params_arg

    p = add("prune-boundary", _prune,
            "Choose the boundary layer b on a boundary sweep and export the adapter pruned to 0..b.")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--boundary-summary", nargs="+", required=True,
                   help="summary.json of the boundary sweep (one per selection split)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True, help="pruned adapter directory")

    p = add("compare-boundary", _compare,
            "Score a test split with the full and the boundary-pruned adapter (unmerged, timed).")
    p.add_argument("--params", type=params_arg, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--pruned", required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--summary", required=True)
