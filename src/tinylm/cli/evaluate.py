"""``tinylm eval``: the loss and perplexity of a trained run on each split, printed."""

from __future__ import annotations

import argparse

from tinylm import api
from tinylm.cli.common import CONSOLE, add_command, add_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = add_command(sub, "eval", run, help="print the loss of a trained run on each split",
                    description="Reload the run in DIR and print its loss and "
                    "perplexity on the train, val and test splits.")
    add_run_dir(p, required=True)


def run(args: argparse.Namespace) -> int:
    api.load(args.out_dir).evaluate(CONSOLE)
    return 0
