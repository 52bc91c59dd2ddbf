"""Where a run's lines go, and the lines themselves.

The library says what it is doing (a run's settings, its evaluations, its
samples) through an ``Output``: two callbacks, one for results and one for
warnings and progress, and a factory of progress bars. ``CONSOLE`` is the
command line's (stdout, stderr, a tqdm bar when stderr is a terminal);
``notebook()`` is the Python API's default (``tqdm.auto``: a widget in
Jupyter, a bar in a terminal); ``SILENT`` says nothing. The library never
calls ``print`` itself.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tinylm.data import Tokenizer  # or a BPE: tinylm.tokenizer's interface
from tinylm.io import atomic_write_text
from tinylm.rng import RNG
from tinylm.sample import MAX_ITEM_TOKENS, mark_known, sample_items, sample_tokens
from tinylm.text import bits
from tinylm.losses import perplexity

# The passage a text run samples at the end (and 'tinylm sample' by default), in characters.
TEXT_PASSAGE = 500


def _silent(line: str) -> None:
    pass


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Output:
    """``say``: a result line; ``warn``: a warning or progress line; ``bars``: which tqdm draws
    progress bars (None: none; "terminal": tqdm on stderr; "auto": tqdm.auto)."""

    say: Callable[[str], None] = _silent
    warn: Callable[[str], None] = _silent
    bars: str | None = None

    def bar(self, **kwargs: Any):
        """A tqdm progress bar, or None where this output draws none (or tqdm is missing)."""
        if self.bars is None:
            return None
        try:
            if self.bars == "auto":
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(file=sys.stderr, **kwargs) if self.bars == "terminal" else tqdm(**kwargs)


SILENT = Output()


def console() -> Output:
    """The command line's output: results on stdout, warnings on stderr, a bar on a terminal."""
    return Output(_stdout, _stderr, "terminal" if sys.stderr.isatty() else None)


def notebook() -> Output:
    """The Python API's output: lines printed, progress through tqdm.auto."""
    return Output(_stdout, _stderr, "auto")


class _Console:
    """``console()`` decided when used, so a test's captured stdout is the one printed to."""

    def __getattr__(self, name: str) -> Any:
        return getattr(console(), name)


CONSOLE: Any = _Console()


def say_samples(out: "Output", marked: Sequence[tuple[str, bool]], prompt: str = "") -> None:
    """Say sampled items, each marked as a copy of a training item or new; an item the
    sampler cut at ``MAX_ITEM_TOKENS`` characters without an end is marked so."""
    if not marked:
        return
    width = max(len(item) for item, _ in marked)
    new = sum(not known for _, known in marked)
    out.say(f"samples ({new} of {len(marked)} new, not in the training set):")
    for item, known in marked:
        mark = "(copy of a training item)" if known else "(new)"
        if len(item) - len(prompt) >= MAX_ITEM_TOKENS:
            mark += f" (cut at {MAX_ITEM_TOKENS} characters: no end of item sampled)"
        out.say(f"  {item:<{width}}  {mark}")


def write_passage(out: "Output", model, tokenizer: Tokenizer, n: int, seed: int, path: Path | None,
                  prompt: str = "", temperature: float = 1.0, top_k: int | None = None) -> str:
    """A continuous passage of ``n`` tokens after ``prompt`` (a text run's samples),
    printed as it is and saved to ``path``; what ``tinylm sample --tokens N`` prints."""
    passage = sample_tokens(model, tokenizer, prompt, n, RNG(seed), temperature, top_k)
    say_passage(out, passage, n, prompt, tokenizer.unit)
    if path is not None:
        atomic_write_text(path, passage)
    return passage


def say_passage(out: "Output", passage: str, n: int, prompt: str = "",
                unit: str = "character") -> None:
    """A sampled passage as it is, after a line saying what it is (``n`` ``unit``s)."""
    after = "the start of a line" if not prompt else repr(prompt)
    out.say(f"sample ({n:,} {unit}s after {after}):")
    out.say(passage)


@contextlib.contextmanager
def progress_bar(out: "Output", what: str, total: int, unit: str
                 ) -> Iterator[Callable[[int, int], None]]:
    """A callback ``(done, total)`` for long work: a progress bar where ``out`` draws them;
    elsewhere a warning line at most every 10 s, so a log shows the work is alive."""
    bar = out.bar(total=total, desc=what, unit=unit, unit_scale=True, leave=False)
    last = [time.perf_counter()]

    def update(done: int, _total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)
        elif time.perf_counter() - last[0] >= 10:
            last[0] = time.perf_counter()
            out.warn(f"{what}: {done:,} of {total:,} {unit}s")

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def sample_and_save(out: "Output", model, tokenizer: Tokenizer, n: int, seed: int, train_lines: Sequence[str],
                    continuous: bool, path: Path) -> None:
    """The samples at the end of training: printed, marked new or copied, and saved one per line.

    They are the ones ``tinylm sample -n N --seed SEED`` prints from the run.
    """
    items = sample_items(model, tokenizer, n, RNG(seed), continuous=continuous)
    say_samples(out, mark_known(items, train_lines))
    atomic_write_text(path, "".join(item + "\n" for item in items))


def format_perplexity(loss: float) -> str:
    ppl = perplexity(loss)
    return "over 1e300" if ppl is None else f"{ppl:.3f}"


def say_loss(out: "Output", name: str, loss: float, se: float | None = None,
             tokens_per_char: float = 1.0, perplexity: bool = False) -> None:
    """One split's line of ``tinylm eval`` (``format_loss``)."""
    out.say(f"{name:>5}: loss {format_loss(loss, se, tokens_per_char, perplexity)}")


def format_loss(loss: float, se: float | None = None, tokens_per_char: float = 1.0,
                perplexity: bool = False) -> str:
    """A loss in nats per token and in bits per character over the same text (``bits``):
    "1.2345 nats (1.7810 bits) per character" where a token is a character
    (``tokens_per_char`` 1), else "3.4567 nats per token (1.2345 bits per character)", with
    "± se" for an estimate; with the perplexity (per token, a list of items' figure) "2.0831,
    perplexity 8.029, 3.0052 bits per character" (a BPE's: "... nats per token, ...")."""
    per_char = f"{bits(loss, tokens_per_char):.4f}"
    per_token = "" if tokens_per_char == 1.0 else " nats per token"
    if perplexity:
        return (f"{loss:.4f}{per_token}, perplexity {format_perplexity(loss)}, {per_char} bits "
                "per character")
    spread = "" if se is None else f" ± {se:.4f}"
    per_char += "" if se is None else f" ± {bits(se, tokens_per_char):.4f}"
    said = (f"{loss:.4f}{spread} nats ({per_char} bits) per character" if not per_token
            else f"{loss:.4f}{spread} nats per token ({per_char} bits per character)")
    return said + ("" if se is None else " (estimated from a sample)")
