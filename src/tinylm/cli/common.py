"""What the subcommands share: the one-line usage error, the -o flag, printing samples."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tinylm.data import Tokenizer
from tinylm.io import atomic_write_text
from tinylm.rng import RNG
from tinylm.sample import MAX_ITEM_TOKENS, mark_known, sample_items, sample_tokens
from tinylm.train import perplexity


# The passage a text run samples at the end (and 'tinylm sample' by default), in characters.
TEXT_PASSAGE = 500


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


def print_samples(marked: Sequence[tuple[str, bool]], prompt: str = "") -> None:
    """Print sampled items, each marked as a copy of a training item or new; an item the
    sampler cut at ``MAX_ITEM_TOKENS`` characters without an end is marked so."""
    if not marked:
        return
    width = max(len(item) for item, _ in marked)
    new = sum(not known for _, known in marked)
    print(f"samples ({new} of {len(marked)} new, not in the training set):")
    for item, known in marked:
        mark = "(copy of a training item)" if known else "(new)"
        if len(item) - len(prompt) >= MAX_ITEM_TOKENS:
            mark += f" (cut at {MAX_ITEM_TOKENS} characters: no end of item sampled)"
        print(f"  {item:<{width}}  {mark}")


def write_passage(model, tokenizer: Tokenizer, n: int, seed: int, path: Path | None,
                  prompt: str = "", temperature: float = 1.0, top_k: int | None = None) -> str:
    """A continuous passage of ``n`` characters after ``prompt`` (a text run's samples),
    printed as it is and saved to ``path``; what ``tinylm sample --tokens N`` prints."""
    passage = sample_tokens(model, tokenizer, prompt, n, RNG(seed), temperature, top_k)
    print(f"sample ({n:,} characters after {'the start of a line' if not prompt else repr(prompt)}):")
    print(passage)
    if path is not None:
        atomic_write_text(path, passage)
    return passage


@contextlib.contextmanager
def progress_bar(what: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A callback ``(done, total)`` for long work: a tqdm bar on a terminal; elsewhere a line
    on stderr at most every 10 s, so a log shows the work is alive."""
    bar = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=total, desc=what, unit=unit, unit_scale=True, file=sys.stderr,
                       leave=False)
    last = [time.perf_counter()]

    def update(done: int, _total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)
        elif time.perf_counter() - last[0] >= 10:
            last[0] = time.perf_counter()
            print(f"{what}: {done:,} of {total:,} {unit}s", file=sys.stderr, flush=True)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


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


def print_loss(name: str, loss: float, se: float | None = None, text: bool = False) -> None:
    """One split's line of ``tinylm eval``; a text run's in bits per character too, and an
    estimate with its standard error."""
    if not text and se is None:
        print(f"{name:>5}: loss {loss:.4f}, perplexity {format_perplexity(loss)}")
        return
    print(f"{name:>5}: loss {format_loss(loss, se)}")


def format_loss(loss: float, se: float | None = None) -> str:
    """"1.2345 nats (1.7810 bits) per character", with "± se" for an estimate."""
    spread = "" if se is None else f" ± {se:.4f}"
    bits_spread = "" if se is None else f" ± {se / math.log(2):.4f}"
    return (f"{loss:.4f}{spread} nats ({loss / math.log(2):.4f}{bits_spread} bits) per character"
            + ("" if se is None else " (estimated from a sample)"))
