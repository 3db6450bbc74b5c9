"""SVD compression's subcommand: ``lorascope export-compressed``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _export(args: argparse.Namespace) -> None:
    from lorascope.analyses.compression.stage import export_compressed

    export_compressed(args.adapter, args.out, args.rank, params=args.params)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from lorascope.cli import params_arg

    p = add("export-compressed", _export,
            "Export an adapter truncated by SVD to a lower rank (a plain peft adapter).")
    p.add_argument("--params", type=params_arg, default=None)
    p.add_argument("--adapter", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--out", required=True)
