"""A continuous document (``--format text``): kept character for character, split
contiguously, encoded once into a compact token array, read through windows.

The data flow of a text run::

    read_text(path)             -> text      (UTF-8, line ends normalised to "\\n", nothing else changed)
    split_text(text)            -> train, val, test   (the first 90%, the next 5%, the last 5%,
                                                        cut at line ends: train + val + test == text)
    encode(text, tokenizer)     -> tokens    (uint8/16/32 by vocabulary size, one per character;
                                              a BPE's: tokenizer.encode_bytes, tinylm.tokenizer)
    TextSplit(tokens[a:b], ...) -> training windows drawn on the fly; evaluation units

Nothing of size (N, block_size) is ever made: a batch gathers its B windows
from the token array when it is drawn, so memory is the token array (one to
four bytes a character, memory-mapped from the run directory) plus one batch.

**Targets and contexts.** Every character of a split is a target exactly
once. Its context is the characters before it in the same split; before the
split's first character the context is "\\n" (token 0), as if the split began
a line. A fixed-window model reads the ``context`` tokens before a target; a
sequence model reads a window of ``block_size`` tokens and predicts the next
one at every position.

**Evaluation** (``units`` and ``tinylm.train.measure``). A split is scored in
*units*, runs of consecutive targets, each scored once:

* a sequence model slides a window of ``T = block_size`` tokens in strides of
  ``S = ceil(T / 2)``: the first window scores its T targets, every later one
  only the S targets it adds, so every target but the first T is scored with
  at least ``T - S`` characters of left context, at twice the cost of
  non-overlapping windows (scoring each target with its full context of T - 1
  would cost T times as much);
* a fixed-window model reads exactly its context for every target: its units
  are runs of ``S = 256`` consecutive targets.

A split of at most ``eval_tokens`` targets is scored whole, exactly. A larger
one is *estimated* from ``ceil(eval_tokens / S)`` units drawn uniformly, the
same ones at every evaluation (their RNG is seeded from the run's seed and the
split's name, never the training RNG): the mean loss of their targets, with
the standard error of a mean over units (the spread of the units' mean losses
/ sqrt(number of units)), since neighbouring targets within a unit are not
independent.
"""

from __future__ import annotations

import codecs
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from tinylm.data import (
    EOT, IGNORE, Tokenizer, characters, code_points, describe_character, not_utf8, read_file_bytes,
)
from tinylm.errors import DataError
from tinylm.rng import RNG

if TYPE_CHECKING:  # where a run's lines go; it builds on this module
    from tinylm.output import Output

FORMATS = ("lines", "text")
# the share of the document that is val and that is test; train is the rest, first
HELD_OUT = 0.05
# a document shorter than this has no room for three splits that mean anything
MIN_CHARACTERS = 20
# characters encoded at a time: bounds the memory of encoding, and how long a signal waits
ENCODE_CHUNK = 1 << 22
# the block of a sequence model on a text when --block-size is left at 0 (from the data)
DEFAULT_BLOCK = 64
# a fixed-window model's evaluation unit: this many consecutive targets
FIXED_UNIT = 256

Progress = Callable[[int, int], None]  # (done, total): long work reports as it goes


def read_text(path: str | os.PathLike) -> bytes:
    """The whole file as one document, as UTF-8 bytes: "\\r\\n" and "\\r" made "\\n", a
    byte-order mark dropped, nothing else changed (tabs, blank lines, leading and trailing
    spaces are kept). Checked to be UTF-8 a piece at a time: the document is never held as a
    Python string, which takes up to four bytes a character. A NUL byte is refused: it is
    the mark of a binary file or of UTF-16, not of text."""
    name = str(path)
    raw = read_file_bytes(path)
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(f"input file {name!r}, line {line} contains "
                        f"{describe_character(chr(0))}: a binary file, or text saved as UTF-16? "
                        "save it as UTF-8")
    decoder = codecs.getincrementaldecoder("utf-8")()
    for lo in range(0, len(raw), ENCODE_CHUNK):
        pending = len(decoder.getstate()[0])  # bytes of a character the last piece began
        try:
            decoder.decode(raw[lo:lo + ENCODE_CHUNK], final=lo + ENCODE_CHUNK >= len(raw))
        except UnicodeDecodeError as e:  # e.start counts from the pending bytes
            raise not_utf8(name, raw, lo - pending + e.start) from None
    return raw


BOM = "\ufeff".encode("utf-8")


def pieces(data: bytes | memoryview) -> Iterator[str]:
    """The text of UTF-8 ``data`` a piece of at most ``ENCODE_CHUNK`` bytes at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for lo in range(0, len(data), ENCODE_CHUNK):
        yield decoder.decode(data[lo:lo + ENCODE_CHUNK], final=lo + ENCODE_CHUNK >= len(data))


def _cut(data: bytes | memoryview, position: int, limit: int) -> int:
    """The first line start at or after byte ``position`` and before ``limit``; where no
    line ends in between (a document of few, long lines), the first character start."""
    if position == 0 or data[position - 1] == NEWLINE:
        return position
    end = bytes(data[position:limit]).find(b"\n")
    if end >= 0 and position + end + 1 < limit:
        return position + end + 1
    while position < limit and data[position] & 0xC0 == 0x80:  # inside a character
        position += 1
    return position


NEWLINE = ord(EOT)


def split_text(data: bytes | memoryview, source: str | None = None
               ) -> tuple[memoryview, memoryview, memoryview]:
    """(train, val, test): the first 90%, the next 5%, the last 5% of the document's bytes,
    each cut moved forward to the next line start, so that ``train + val + test == data``."""
    view, n = memoryview(data), len(data)
    if n < MIN_CHARACTERS:
        where = f"input file {source!r}" if source else "the input"
        raise DataError(f"{where} has {n} bytes; at least {MIN_CHARACTERS} are needed to "
                        "hold out a validation and a test text")
    held = max(1, round(n * HELD_OUT))
    b = _cut(view, n - held, n)
    a = _cut(view, b - held, b)
    return view[:a], view[a:b], view[b:]


def split_off_end(data: bytes | memoryview, source: str) -> tuple[memoryview, memoryview]:
    """(rest, end): the last 5% of ``data``, cut at a line start, for a split not given."""
    view, n = memoryview(data), len(data)
    if n < MIN_CHARACTERS:
        raise DataError(f"train file {source!r} has {n} bytes; at least {MIN_CHARACTERS} are "
                        "needed to split off a held-out text")
    cut = _cut(view, n - max(1, round(n * HELD_OUT)), n)
    return view[:cut], view[cut:]


def read_text_splits(train: str | os.PathLike, val: str | os.PathLike | None = None,
                     test: str | os.PathLike | None = None) -> tuple[memoryview, ...]:
    """(train, val, test) texts from files already split; a missing one is the end of train
    (test the very end, then val before it), so held-out text follows what is learnt."""
    data = memoryview(read_text(train))
    if val is None and test is None:
        return split_text(data, str(train))
    given_test = memoryview(read_text(test)) if test is not None else None
    given_val = memoryview(read_text(val)) if val is not None else None
    if given_test is None:
        data, given_test = split_off_end(data, str(train))
    if given_val is None:
        data, given_val = split_off_end(data, str(train))
    return data, given_val, given_test


def tokenizer_of(texts: Sequence[str | bytes | memoryview]) -> Tokenizer:
    """The characters of every split, "\\n" first (token 0, the context before a split)."""
    seen = [np.array([NEWLINE], np.uint32)]
    for t in texts:
        seen.extend(characters(piece) for piece in ([t] if isinstance(t, str) else pieces(t)))
    return Tokenizer.from_chars(map(chr, np.unique(np.concatenate(seen)).tolist()))


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer that holds every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise DataError(f"a vocabulary of {vocab_size:,} characters is too large")


def encode(text: str | bytes | memoryview, tokenizer: Tokenizer, out: np.ndarray | None = None,
           progress: Progress | None = None) -> np.ndarray:
    """The token ids of ``text`` (a string, or UTF-8 bytes) in the tokenizer's compact dtype,
    written into the start of ``out`` if given (which must have room: a character is at
    least a byte); returns the filled part. A piece at a time, so the memory it takes
    beside the result is bounded, with ``progress(done, total)`` after each."""
    whole = len(text)
    if isinstance(text, str):
        chunks: Iterator[str] = (text[lo:lo + ENCODE_CHUNK] for lo in range(0, whole, ENCODE_CHUNK))
    else:
        chunks = pieces(text)
    if out is None:
        out = np.empty(whole, dtype=token_dtype(tokenizer.vocab_size))
    largest = max(ord(ch) for ch in tokenizer.itos)
    lut = np.full(largest + 1, -1, dtype=np.int64)
    lut[[ord(ch) for ch in tokenizer.itos]] = np.arange(tokenizer.vocab_size)
    filled = 0
    for k, piece in enumerate(chunks):
        points = code_points(piece)
        if len(points) and (points.max() > largest or (ids := lut[points]).min() < 0):
            unknown = next(ch for ch in piece if ch not in tokenizer.stoi)
            raise DataError(f"character {unknown!r} is not in the vocabulary")
        if len(points):
            out[filled:filled + len(points)] = ids
        filled += len(points)
        if progress is not None:
            progress(min(whole, (k + 1) * ENCODE_CHUNK), whole)
    return out[:filled]



@dataclass(frozen=True)
class TextSplit:
    """One split of a document as a token array, read through windows made on demand.

    ``per_position`` False: a fixed-window model; an example is one target and
    the ``context`` tokens before it. True: a sequence model; an example is a
    window of ``block_size`` targets and the tokens one position before them.
    """

    name: str
    tokens: np.ndarray  # (N,) the split's characters, in the run's compact dtype
    context: int  # fixed-window models: tokens read before a target
    block_size: int | None = None  # sequence models: positions of a window
    pad: int = 0  # the token before a split's first character: "\n"
    loader: str = "text"
    characters: int | None = None  # the characters its tokens stand for (None: one each)

    @property
    def per_position(self) -> bool:
        return self.block_size is not None

    @property
    def n_tokens(self) -> int:
        """Targets of the split: every token."""
        return len(self.tokens)

    @property
    def tokens_per_char(self) -> float:
        return tokens_per_char(self.n_tokens, self.characters)

    @property
    def width(self) -> int:
        """Positions an example covers: its targets (sequence) or its context (fixed)."""
        return self.block_size if self.per_position else self.context

    def __len__(self) -> int:
        """Examples a batch draws from: window starts, or targets."""
        if self.per_position:
            return max(0, len(self.tokens) - self.block_size + 1)
        return len(self.tokens)

    def examples(self, starts: np.ndarray, X: np.ndarray | None = None,
                 Y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The examples at ``starts`` (B,): X (B, width) int64, and Y (B, T) or (B,)."""
        starts = np.asarray(starts, dtype=np.int64)
        if self.per_position:
            targets = starts[:, None] + np.arange(self.block_size)  # (B, T)
            return self._read(targets - 1, X), self._read(targets, Y)
        reads = starts[:, None] - self.context + np.arange(self.context)  # (B, context)
        return self._read(reads, X), self._read(starts, Y)

    def _read(self, positions: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The tokens at ``positions``, "\\\\n" before the start, as int64 (into ``out``)."""
        if out is None:
            out = np.empty(positions.shape, dtype=np.int64)
        out[...] = self.tokens[np.maximum(positions, 0)]
        if positions.size and positions.min() < 0:
            out[positions < 0] = self.pad
        return out

    def windows(self, ends: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation examples of the units ending at ``ends`` (U,) (exclusive), each scoring
        its last ``scored`` (U,) targets. A sequence model: one window a unit, X and Y
        (U, T), the targets not scored set to ``IGNORE``. A fixed-window model: one example
        a scored target, X (sum(scored), context) and Y (sum(scored),), unit by unit."""
        ends, scored = np.asarray(ends, np.int64), np.asarray(scored, np.int64)
        if self.per_position:
            T = min(self.block_size, len(self.tokens))
            X, Y = TextSplit(self.name, self.tokens, 0, T, self.pad).examples(ends - T)
            Y[np.arange(T)[None, :] < (T - scored)[:, None]] = IGNORE  # (U, T)
            return X, Y
        first = np.repeat(ends - scored, scored)  # (sum(scored),) the unit's first target
        offset = np.arange(len(first)) - np.repeat(np.cumsum(scored) - scored, scored)
        return self.examples(first + offset)


@dataclass(frozen=True)
class Units:
    """How an evaluation scores a split: units ending at ``ends`` (exclusive), each scoring
    its last ``scored`` targets; ``exact`` (every target once) or a sample."""

    ends: np.ndarray  # (U,)
    scored: np.ndarray  # (U,)
    exact: bool

    def __len__(self) -> int:
        return len(self.ends)


def units(split: TextSplit, budget: int, seed: int) -> Units:
    """The evaluation units of ``split`` under a budget of ``budget`` targets (see the
    module docstring): every target once if the split has at most ``budget``, else a
    fixed sample of units drawn with ``RNG`` seeded from ``seed`` and the split's name."""
    n = split.n_tokens
    if split.per_position:
        T = min(split.block_size, n)
        stride = math.ceil(T / 2)
    else:
        T = stride = min(FIXED_UNIT, n)
    if n <= budget:
        # the first unit scores its T targets, each later one those up to `stride` further
        ends = np.minimum(np.arange(T, n + stride, stride, dtype=np.int64), n)
        ends = np.unique(ends)
        scored = np.diff(ends, prepend=0)
        return Units(ends, scored, True)
    count = math.ceil(budget / stride)
    rng = RNG(_split_seed(seed, split.name))
    # a unit scores the last `stride` targets of a window that ends within the split
    ends = T + (rng.random_array(count) * (n - T + 1)).astype(np.int64)
    return Units(ends, np.full(count, stride, dtype=np.int64), False)


def _split_seed(seed: int, name: str) -> int:
    """A seed of its own for each split's evaluation sample: never 0, never the run's."""
    mixed = (seed * 0x9E3779B97F4A7C15 + sum(ord(c) << (8 * i) for i, c in enumerate(name)))
    return (mixed % ((1 << 64) - 1)) + 1


def encode_splits(texts: Sequence[str | bytes | memoryview], tokenizer: Tokenizer,
                  progress: Progress | None = None) -> tuple[np.ndarray, list[int]]:
    """The splits encoded one after the other into one token array (what tokens.npy holds),
    and each split's length in tokens; ``progress(done, total)`` over all their bytes. Each
    split is encoded on its own (no token spans two), by the tokenizer's ``encode_bytes``."""
    total = sum(len(t) for t in texts)
    # a token holds at least a byte: room for any tokenizer's ids
    room = np.empty(total, dtype=token_dtype(tokenizer.vocab_size))
    lengths, lo = [], 0
    for t in texts:
        done = lo
        part = tokenizer.encode_bytes(
            t, room[sum(lengths):],
            None if progress is None else (lambda d, n, done=done: progress(done + d, total)))
        lengths.append(len(part))
        lo += len(t)
    return room[:sum(lengths)], lengths


@dataclass(frozen=True)
class Encoded:
    """A document's three parts encoded: what a text run writes (tokens.npy, its split
    points and characters) and what its records need (each part's tokens per character)."""

    tokens: np.ndarray  # the parts' tokens one after the other
    lengths: list[int]  # each part's length in tokens
    characters: list[int]  # each part's characters

    @property
    def parts(self) -> tuple[np.ndarray, ...]:
        """Each part's tokens, views of ``tokens``."""
        return split_tokens(self.tokens, self.lengths)

    @property
    def tokens_per_char(self) -> list[float]:
        """Each part's tokens over its characters (``bits``)."""
        return [tokens_per_char(n, c) for n, c in zip(self.lengths, self.characters)]


def encode_document(parts: Sequence[bytes | memoryview], tokenizer: Tokenizer,
                    output: Output) -> Encoded:
    """A text run's parts (its UTF-8 bytes) encoded by ``encode_splits`` under a progress bar
    drawn by ``output``, and their characters counted."""
    from tinylm.output import progress_bar  # output builds on this module

    with progress_bar(output, "encoding", sum(map(len, parts)), "byte") as bar:
        tokens, lengths = encode_splits(parts, tokenizer, bar)
    return Encoded(tokens, lengths, [count_characters(part) for part in parts])


def split_tokens(tokens: np.ndarray, lengths: Sequence[int]) -> tuple[np.ndarray, ...]:
    """The three splits' views of ``tokens``, by their lengths in tokens."""
    bounds = np.cumsum([0, *lengths])
    return tuple(tokens[lo:hi] for lo, hi in zip(bounds, bounds[1:]))


def count_characters(data: bytes | memoryview) -> int:
    """The characters of UTF-8 ``data``: its bytes that begin one (not 10xxxxxx)."""
    n = 0
    for lo in range(0, len(data), ENCODE_CHUNK):
        piece = np.frombuffer(data[lo:lo + ENCODE_CHUNK], np.uint8)
        n += len(piece) - int(np.count_nonzero((piece & 0xC0) == 0x80))
    return n


def tokens_per_char(tokens: int, characters: int | None) -> float:
    """Tokens over the characters they stand for (None: one each), what turns nats per token
    into bits per character (``bits``): exactly 1 where every token is a character."""
    return 1.0 if characters is None else tokens / max(1, characters)


def bits(nats: float, tokens_per_char: float = 1.0) -> float:
    """A loss in bits per character from nats per token: nats x tokens / characters / ln 2,
    ``tokens_per_char`` the split's tokens over its characters (1 where a token is a
    character, and then exactly the nats in bits)."""
    return nats * tokens_per_char / math.log(2)
