"""What the subcommands share: the one-line usage error, the -o flag, printing samples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tinylm.data import Tokenizer
from tinylm.io import atomic_write_text
from tinylm.rng import RNG
from tinylm.sample import mark_known, sample_items
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


def sample_and_save(model, tokenizer: Tokenizer, n: int, seed: int, train_lines: Sequence[str],
                    continuous: bool, path: Path) -> None:
    """The samples at the end of training: printed, marked new or copied, and saved one per line.

    They are the ones ``tinylm sample -n N --seed SEED`` prints from the run.
    """
    items = sample_items(model, tokenizer, n, RNG(seed), continuous=continuous)
    print_samples(mark_known(items, train_lines))
    atomic_write_text(path, "".join(item + "\n" for item in items))


def format_perplexity(loss: float) -> str:
    ppl = perplexity(loss)
    return "over 1e300" if ppl is None else f"{ppl:.3f}"


def print_loss(name: str, loss: float) -> None:
    """One split's line of ``tinylm eval``."""
    print(f"{name:>5}: loss {loss:.4f}, perplexity {format_perplexity(loss)}")
