"""`reproduce` and `bench`: the command line's door to the experiments (`experiments/`)."""

from __future__ import annotations

import argparse


def cmd_reproduce(args: argparse.Namespace) -> int:
    from vaecompress.experiments.reproduce import run_reproduce

    return run_reproduce(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from vaecompress.experiments.bench import run_bench

    return run_bench(args)
