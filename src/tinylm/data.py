"""From a text file to (context, target) examples.

The data flow of every run starts here::

    read_lines(path)          -> lines        (validated, UTF-8 only)
    split_lines(lines)        -> train, val, test
    Tokenizer.from_lines(...) -> stoi / itos  (characters, newline = end of text)
    Items(lines, tokenizer)   -> a split's tokens, encoded once for every builder below
    word_examples / stream_examples -> X (N, context) int64, Y (N,) int64

Two ways to turn lines into examples:

* ``words``: each line is an independent item. The context starts as
  ``context`` end-of-text tokens; every character of the line and then the
  end-of-text token is a target. This is the default for every model.
* ``stream``: every line plus "\\n" is joined into one continuous text and a
  window of ``context + 1`` tokens slides over it, so contexts run across
  item boundaries. It exists to reproduce the classic reference figures.

Sequence models (recurrent nets, Transformers) predict at every position of
a block of ``block_size`` tokens instead, from everything before it:
``word_sequences`` makes each item one row, EOT + characters as inputs and
characters + EOT as targets, padded with ``IGNORE`` targets; and
``stream_sequences`` makes every window of the joined text a row, its
targets the window shifted by one. Either way every character and every end
token of an item is predicted once, as in the fixed-window ``words`` and
``stream`` examples, so a mean loss over the targets measures the same
quantity for both kinds of model.
"""

from __future__ import annotations

import functools
import os
import random
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from tinylm.errors import ConfigError, DataError

EOT = "\n"
LOADERS = ("words", "stream")
IGNORE = -1  # the target of a padding position: no prediction is scored there


def default_dataset() -> Path:
    """Path of the bundled dataset: 32,033 names, one per line."""
    return Path(str(resources.files("tinylm").joinpath("resources/names.txt")))


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read a UTF-8 text file as a list of non-blank, stripped lines (``--format lines``).

    CRLF and CR line ends are normalised; a UTF-8 byte-order mark is ignored.
    Whitespace inside an item (a tab, say) is an ordinary character; other
    control characters are refused, naming ``--format text``, which keeps a
    file as it is. Raises ``DataError`` naming the file and the problem for
    anything that is not a usable list of items.
    """
    name = str(path)
    text = decode_file(path)
    bad = first_refused_character(text, ITEM_CONTROLS)
    if bad is not None:
        position, ch = bad
        raise DataError(f"input file {name!r}, line {text.count(EOT, 0, position) + 1} contains "
                        f"{describe_character(ch)}; with --format text the file is read as one "
                        "continuous document, every character kept")
    lines = [stripped for line in text.split(EOT) if (stripped := line.strip())]
    if not lines:
        raise DataError(f"input file {name!r} has no non-blank lines")
    return lines


def decode_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, its line ends normalised to "\\n" and a byte-order mark dropped.

    ``DataError`` for a file that is missing, a directory, unreadable, empty or not UTF-8.
    """
    raw = read_file_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(str(path), raw, e.start) from None
    del raw
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an input file; ``DataError`` for one that is missing, a directory, not a
    regular file (a pipe would wait for a writer), unreadable or empty."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError(f"input file {name!r} does not exist")
    if p.is_dir():
        raise DataError(f"input {name!r} is a directory, not a text file")
    if not p.is_file():
        raise DataError(f"input {name!r} is not a regular file (a pipe or a device?)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read input file {name!r}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"input file {name!r} is empty")
    return raw


def not_utf8(name: str, raw: bytes, start: int) -> DataError:
    """The one-line error for the byte at ``start`` of ``raw`` that is not UTF-8."""
    line = raw.count(b"\n", 0, start) + 1
    column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
    return DataError(f"input file {name!r} is not UTF-8: byte 0x{raw[start]:02x} at line {line}, "
                     f"column {column} (byte offset {start}); save it as UTF-8")


# Control characters an item may hold: the whitespace among them (tab, vertical tab, form
# feed, the information separators, NEL). "\n" ends an item and "\r" is normalised to it.
ITEM_CONTROLS = frozenset(ch for ch in map(chr, range(0x100))
                          if unicodedata.category(ch) == "Cc" and ch.isspace()) - {"\n", "\r"}


def characters(text: str) -> np.ndarray:
    """The distinct code points of ``text``, sorted (uint32): vectorised, a piece at a time
    (a count over a whole 100 MB text would take 800 MB of int64 indices at once)."""
    seen: set[int] = set()
    for lo in range(0, len(text), CHARACTERS_CHUNK):
        seen.update(np.flatnonzero(np.bincount(code_points(text[lo:lo + CHARACTERS_CHUNK])))
                    .tolist())
    return np.array(sorted(seen), dtype=np.uint32)


def code_points(piece: str) -> np.ndarray:
    """The code points of ``piece`` as an array: one byte each where it is ASCII (the common
    case, and a quarter of the memory), else four."""
    if piece.isascii():
        return np.frombuffer(piece.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(piece.encode("utf-32-le"), dtype="<u4")


# characters looked at a time by ``characters``
CHARACTERS_CHUNK = 1 << 22


def first_refused_character(text: str, allowed: frozenset[str] = frozenset()
                            ) -> tuple[int, str] | None:
    """(position, character) of the first control character of ``text`` outside ``allowed``
    and other than "\\n", or None. The distinct characters are found first, so a clean
    text costs one vectorised pass."""
    bad = [chr(c) for c in characters(text)
           if unicodedata.category(chr(c)) == "Cc" and chr(c) != EOT and chr(c) not in allowed]
    if not bad:
        return None
    position = min(text.index(ch) for ch in bad)
    return position, text[position]


def describe_character(ch: str) -> str:
    return "a NUL byte" if ch == "\x00" else f"the control character U+{ord(ch):04X}"


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes for ``n`` lines: test and val get min(1000, n // 10) each."""
    held_out = min(1000, n // 10)
    return n - 2 * held_out, held_out, held_out


MIN_LINES = 10


def split_lines(
    lines: Sequence[str], seed: int = 42, source: str | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Shuffle line indices with ``random.Random(seed)`` and cut test, val, train.

    The first ``min(1000, len // 10)`` shuffled indices are test, the next as
    many are val, the rest train; each split keeps the shuffled order. On the
    bundled names this is the well-known 30,033 / 1,000 / 1,000 split.
    """
    if len(lines) < MIN_LINES:
        where = f"input file {source!r}" if source else "the input"
        raise DataError(
            f"{where} has {len(lines)} non-blank lines; at least {MIN_LINES} are needed "
            "to hold out a validation and a test line"
        )
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    _, n_val, n_test = split_sizes(len(lines))
    test = [lines[i] for i in order[:n_test]]
    val = [lines[i] for i in order[n_test : n_test + n_val]]
    train = [lines[i] for i in order[n_test + n_val :]]
    return train, val, test


def read_splits(train: str | os.PathLike, val: str | os.PathLike | None = None,
                test: str | os.PathLike | None = None, seed: int = 42
                ) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) lines from files already split; a missing val or test is split off train.

    With neither val nor test this is ``split_lines`` of the train file. With
    one of them missing, ``min(1000, len // 10)`` lines of the shuffled train
    file (``random.Random(seed)``) become it, the rest stay train.
    """
    lines = read_lines(train)
    given = {"val": read_lines(val) if val is not None else None,
             "test": read_lines(test) if test is not None else None}
    if given["val"] is None and given["test"] is None:
        return split_lines(lines, seed=seed, source=str(train))
    if None in given.values():
        if len(lines) < MIN_LINES:
            raise DataError(f"train file {str(train)!r} has {len(lines)} non-blank lines; at least "
                            f"{MIN_LINES} are needed to split off a held-out split")
        order = list(range(len(lines)))
        random.Random(seed).shuffle(order)
        n_held = split_sizes(len(lines))[1]
        missing = "val" if given["val"] is None else "test"
        given[missing] = [lines[i] for i in order[:n_held]]
        lines = [lines[i] for i in order[n_held:]]
    return lines, given["val"], given["test"]


@dataclass(frozen=True)
class Tokenizer:
    """Characters to token ids and back; the newline is the end-of-text token.

    Built from all lines of the input (every split), so that val and test never
    hold an unknown character. The vocabulary is "\\n", always token 0, then
    the sorted set of the other characters (a tab, which sorts before "\\n",
    comes after it, so runs made before tabs were read keep their ids).
    """

    itos: tuple[str, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)
    # what one id stands for, in the lines a run prints; what the vocabulary line adds
    unit: ClassVar[str] = "character"
    note: ClassVar[str] = ""
    files: ClassVar[tuple[str, ...]] = ()  # the vocabulary is kept in the manifest

    def __post_init__(self) -> None:
        if len(set(self.itos)) != len(self.itos) or EOT not in self.itos:
            raise DataError("a vocabulary must hold distinct characters including '\\n'")
        if any(len(ch) != 1 for ch in self.itos):
            raise DataError("a vocabulary holds single characters")
        object.__setattr__(self, "stoi", {ch: i for i, ch in enumerate(self.itos)})

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> "Tokenizer":
        chars = set(EOT)
        for line in lines:
            chars.update(line)
        return cls.from_chars(chars)

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> "Tokenizer":
        """"\\n" first, then the other characters sorted."""
        return cls((EOT,) + tuple(sorted(set(chars) - {EOT})))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eot(self) -> int:
        return self.stoi[EOT]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def encode_bytes(self, data: bytes | memoryview, out: np.ndarray | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """A document's ids (its UTF-8 bytes, one id a character), into ``out`` if given
        (``tinylm.text.encode``: a piece at a time)."""
        from tinylm import text  # text builds on this module

        return text.encode(data, self, out, progress)

    def to_run(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """How a run keeps it: the vocabulary in the manifest, no file of its own."""
        return {"vocab": self.to_list()}, {}

    def to_list(self) -> list[str]:
        """The vocabulary as a JSON-friendly list (index = token id)."""
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> "Tokenizer":
        return cls(tuple(itos))


def stream_tokens(lines: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
    """All lines joined as one text, each followed by the end-of-text token.

    Encoded as one text: a line holds no "\\n", and no token of a run's tokenizer holds
    the end token or spans a line end (a BPE of items learns no merge across one), so
    this is every line encoded on its own, followed by the end token, at the cost of one
    call. Through ``encode_bytes``, which gives ``encode``'s ids as an array: no Python list
    of every id in between."""
    joined = "".join(line + EOT for line in lines).encode("utf-8")
    return tokenizer.encode_bytes(joined).astype(np.int64)


class Items:
    """A split's items and their tokens: encoded when first asked for, then kept.

    Every example builder below reads its tokens from here, so a run that makes several
    kinds of examples of one split (an n-gram grid's orders, a neural run's block size
    found from the longest item) encodes it once; a slow tokenizer (a BPE) makes that
    worth it. Nothing is encoded until a builder has checked its own settings."""

    def __init__(self, lines: Sequence[str], tokenizer: Tokenizer) -> None:
        self.lines = lines
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.lines)

    @functools.cached_property
    def tokens(self) -> np.ndarray:
        """``stream_tokens`` of the items: each item's tokens, then the end token."""
        return stream_tokens(self.lines, self.tokenizer)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Each item's length in tokens with its end token, (N,)."""
        ends = np.flatnonzero(self.tokens == self.tokenizer.eot)
        if len(ends) != len(self.lines):
            raise DataError("the tokenizer made an item's end token inside an item")
        return np.diff(ends, prepend=-1)

    @property
    def tokens_per_char(self) -> float:
        """The items' tokens over their characters, each end with its line end: what turns
        nats per token into bits per character (``tinylm.text.bits``)."""
        from tinylm import text  # text builds on this module

        return text.tokens_per_char(len(self.tokens), item_characters(self.lines))


def item_characters(lines: Sequence[str]) -> int:
    """The characters of items, each with its line end (what the end token stands for)."""
    return sum(len(line) + 1 for line in lines)


def stream_examples(
    lines: Sequence[str], tokenizer: Tokenizer, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``context + 1`` tokens over the joined stream, one per start position."""
    return _stream_examples(Items(lines, tokenizer), context)


def word_examples(
    lines: Sequence[str], tokenizer: Tokenizer, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each line an independent item: contexts padded with end-of-text tokens."""
    return _word_examples(Items(lines, tokenizer), context)


def word_sequences(
    lines: Sequence[str], tokenizer: Tokenizer, block_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each line one row of a sequence model: X (N, T) = EOT + its tokens, padded with EOT;
    Y (N, T) = its tokens + EOT, padded with ``IGNORE``. T is ``block_size``, by default
    the longest line + 1 (the fewest positions that hold every item)."""
    return _word_sequences(Items(lines, tokenizer), block_size)


def stream_sequences(
    lines: Sequence[str], tokenizer: Tokenizer, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every window of ``block_size`` tokens of the joined text, one per start position:
    X (N, T) the window, Y (N, T) the window shifted by one token."""
    return _stream_sequences(Items(lines, tokenizer), block_size)


def make_examples(
    lines: Sequence[str], tokenizer: Tokenizer, context: int, loader: str = "words"
) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) for ``lines`` with the named loader ('words' or 'stream')."""
    return examples_of(Items(lines, tokenizer), context, loader)


def make_sequences(
    lines: Sequence[str], tokenizer: Tokenizer, block_size: int, loader: str = "words"
) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y), both (N, block_size), of a sequence model for ``lines`` with the named loader."""
    return sequences_of(Items(lines, tokenizer), block_size, loader)


def examples_of(items: Items, context: int, loader: str = "words"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``make_examples`` of items that may be encoded already."""
    return _by_loader(loader, _word_examples, _stream_examples)(items, context)


def sequences_of(items: Items, block_size: int, loader: str = "words"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``make_sequences`` of items that may be encoded already."""
    return _by_loader(loader, _word_sequences, _stream_sequences)(items, block_size)


def _stream_examples(items: Items, context: int) -> tuple[np.ndarray, np.ndarray]:
    _check_context(context)
    tokens = items.tokens
    n = len(tokens) - context
    if n <= 0:
        raise DataError(f"{len(tokens)} tokens are too few for a context of {context}")
    windows = np.lib.stride_tricks.sliding_window_view(tokens, context + 1)[:n]
    # copies: the windows are read-only views of the token stream
    return windows[:, :context].copy(), windows[:, context].copy()


def _word_examples(items: Items, context: int) -> tuple[np.ndarray, np.ndarray]:
    _check_context(context)
    eot = items.tokenizer.eot
    if not len(items):
        return np.zeros((0, context), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Every token of the joined stream (each line and its end-of-text) is one
    # target; its context is the `context` tokens before it, with those that
    # lie before the start of its own item replaced by end-of-text padding.
    # One pass over the whole stream: a loop over the lines took 0.4 s on the 32k names.
    tokens, lengths = items.tokens, items.lengths                             # (N,), (L,)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)                 # (N,) where each item begins
    padded = np.concatenate([np.full(context, eot, dtype=np.int64), tokens])
    windows = np.lib.stride_tricks.sliding_window_view(padded, context + 1)  # (N, context + 1)
    positions = np.arange(len(tokens))[:, None] - context + np.arange(context)  # (N, context)
    X = np.where(positions >= starts[:, None], windows[:, :context], eot)
    return X, windows[:, context].copy()  # a writable array of its own, not a view


def _word_sequences(items: Items, block_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    tokens, lengths = items.tokens, items.lengths  # lengths count each item's end token
    longest = int(lengths.max(initial=1)) - 1
    T = longest + 1 if block_size is None else block_size
    _check_block(T)
    if longest + 1 > T:
        raise DataError(f"an item of {longest} {items.tokenizer.unit}s needs a block size of at "
                        f"least {longest + 1}, got {T}")
    eot, rows = items.tokenizer.eot, len(items)
    X = np.full((rows, T), eot, dtype=np.int64)
    Y = np.full((rows, T), IGNORE, dtype=np.int64)
    row = np.repeat(np.arange(rows), lengths)                             # (N,) each token's item
    col = np.arange(len(tokens)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,)
    Y[row, col] = tokens  # an item's tokens, then its end
    inside = col + 1 < T  # the end token read as an input would fall past the block: padding anyway
    X[row[inside], col[inside] + 1] = tokens[inside]
    return X, Y


def _stream_sequences(items: Items, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    _check_block(block_size)
    tokens = items.tokens
    n = len(tokens) - block_size
    if n <= 0:
        raise DataError(f"{len(tokens)} tokens are too few for a block size of {block_size}")
    windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)[:n]  # (N, T+1)
    return windows[:, :-1].copy(), windows[:, 1:].copy()


def _by_loader(loader: str, words, stream):
    if loader not in LOADERS:
        raise ConfigError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    return words if loader == "words" else stream


def _check_block(block_size: int) -> None:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise DataError(f"block size must be a whole number >= 1, got {block_size!r}")


def _check_context(context: int) -> None:
    if not isinstance(context, (int, np.integer)) or context < 0:
        raise DataError(f"context must be a whole number >= 0, got {context!r}")


SPLIT_NAMES = ("train", "val", "test")
