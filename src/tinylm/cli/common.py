"""What the subcommands share: the one-line usage error, the -o flag, printing samples."""

from __future__ import annotations

import argparse
from typing import Sequence

from tinylm.train import perplexity


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which defers it to a step boundary itself)."""


class UsageError(Exception):
    """A command line that cannot be parsed: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message; tinylm prints the one clear line only."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def add_run_dir(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("-o", "--out-dir", default=None if required else "out",
                   required=required, metavar="DIR",
                   help="run directory" + ("" if required else " (default: out/)"))


def print_samples(marked: Sequence[tuple[str, bool]]) -> None:
    """Print sampled items, each marked as a copy of a training item or new."""
    if not marked:
        return
    width = max(len(item) for item, _ in marked)
    new = sum(not known for _, known in marked)
    print(f"samples ({new} of {len(marked)} new, not in the training set):")
    for item, known in marked:
        print(f"  {item:<{width}}  {'(copy of a training item)' if known else '(new)'}")


def print_loss(name: str, loss: float) -> None:
    """One split's line of ``tinylm eval``."""
    ppl = perplexity(loss)
    print(f"{name:>5}: loss {loss:.4f}, perplexity {'over 1e300' if ppl is None else f'{ppl:.3f}'}")
