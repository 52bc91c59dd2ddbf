"""A byte-level BPE tokenizer, trained from scratch: ``train``, and ``BPE`` to encode,
decode, save and load. See docs/bpe.md.

**The algorithm, exactly.** The text is its UTF-8 bytes; the vocabulary starts as the
256 byte values. Each step merges the most frequent adjacent pair (ties: the smallest
(left id, right id)) into a new id, 256 for the first merge, 257 for the next... A
pair's count is the number of adjacent positions holding it, overlapping ones included
(in ``aaa`` the pair (a, a) counts 2); a merge replaces its occurrences left to right
without overlap (``aaa`` becomes [aa, a], ``aaaa`` [aa, aa]). Training stops when
``vocab_size`` ids exist or when no pair is left at all: any pair that occurs, even
once, is merged, so a short text can end with fewer ids than asked for.

**Splits.** ``split="none"``: the whole text is one sequence. ``split="gpt4"``: the text
is first cut into chunks by GPT-4's published pre-tokenizer pattern (``GPT4_PATTERN``,
through the ``regex`` package), and no pair spanning two chunks is ever counted or
merged, so a token never straddles a word and the space or punctuation before it.

**Encoding** applies the merges in the order they were learned, each one left to right
without overlap and never across a chunk boundary; the training text therefore encodes
to exactly the sequence training ended with. Decoding concatenates the tokens' bytes and
reads them as UTF-8, a broken character shown as U+FFFD, so any id sequence decodes.

The merging itself, on a whole text at once, is ``tinylm.bpe_merge``.
"""

from __future__ import annotations

import functools
import json
import operator
import os
from typing import Any, Sequence

import numpy as np

from tinylm import bpe_merge
from tinylm.bpe_merge import FIRST_ID, Progress
from tinylm.errors import ConfigError, DataError, TinylmError
from tinylm.io import atomic_write_text

SPLITS = ("none", "gpt4")
FORMAT = "tinylm-bpe"
VERSION = 1
# GPT-4's (cl100k_base) pre-tokenizer pattern as OpenAI's tiktoken publishes it: English
# contractions, letters with at most one leading non-letter, numbers of 1-3 digits,
# punctuation runs, and whitespace (the last space left to start the next word)
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
NEWLINE = ord("\n")
# ids are int32 in the merge engine, and pair keys left * K + right must fit an int64
MAX_VOCAB = np.iinfo(np.int32).max


class MergesError(TinylmError):
    """A merges file (or its JSON) that is not a tinylm BPE tokenizer."""


class MissingDependency(TinylmError):
    """An optional package that a feature needs is not installed."""


class BPE:
    """A trained tokenizer: ``merges[i]`` = (left id, right id) makes id 256 + i."""

    def __init__(self, merges: Sequence[tuple[int, int]], split: str = "none") -> None:
        check_split(split)
        self.merges = _checked(merges)
        self.split = split
        self._bytes = _token_bytes(self.merges)
        # the pairs encoding keeps track of: those some merge makes into a token
        self._wanted = frozenset(a * self.vocab_size + b for a, b in self.merges)

    @property
    def vocab_size(self) -> int:
        return FIRST_ID + len(self.merges)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``encode``'s ids: uint16 up to 65,536 ids, else uint32."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def __repr__(self) -> str:
        return f"BPE(vocab_size={self.vocab_size}, split={self.split!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BPE) and self.merges == other.merges
                and self.split == other.split)

    def encode(self, text: str | bytes) -> np.ndarray:
        """The ids of ``text`` (a string, or bytes taken as they are) in ``dtype``."""
        data = as_bytes(text)
        seq = bpe_merge.Sequence(data, chunk_starts(data, self.split), self.vocab_size,
                                 count=False, keep=self._wanted.__contains__)
        bpe_merge.apply(seq, self.merges)
        return seq.tokens().astype(self.dtype)

    def token_bytes(self, token: int) -> bytes:
        """The bytes that id ``token`` stands for."""
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) \
                or not 0 <= token < self.vocab_size:
            raise DataError(f"token {token!r} is not an id of this tokenizer "
                            f"(0 to {self.vocab_size - 1})")
        return self._bytes[int(token)]

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes of ``ids``' tokens, concatenated."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return b""
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise DataError(f"token ids must be a sequence of integers, not {ids.dtype} "
                            f"of shape {ids.shape}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise DataError(f"token {bad} is not an id of this tokenizer "
                            f"(0 to {self.vocab_size - 1})")
        return b"".join(map(self._bytes.__getitem__, ids.tolist()))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``: their bytes as UTF-8, a broken character as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "split": self.split,
                "merges": [[a, b] for a, b in self.merges]}

    @classmethod
    def from_json(cls, d: Any) -> "BPE":
        """The tokenizer of ``to_json``'s dict; ``MergesError`` for anything else."""
        if not isinstance(d, dict):
            raise MergesError(f"a BPE tokenizer is a JSON object, not {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise MergesError(f"not a tinylm BPE tokenizer: format {d.get('format')!r}, "
                              f"expected {FORMAT!r}")
        if d.get("version") != VERSION or isinstance(d.get("version"), bool):
            raise MergesError(f"tinylm BPE version {d.get('version')!r} is not supported "
                              f"(this tinylm reads version {VERSION})")
        unknown = sorted(set(d) - {"format", "version", "split", "merges"})
        if unknown:
            raise MergesError(f"unknown field {unknown[0]!r} in a BPE tokenizer")
        split = d.get("split")
        if split not in SPLITS:
            raise MergesError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        merges = d.get("merges")
        if not isinstance(merges, list):
            raise MergesError(f"merges must be a list of [left, right] pairs, "
                              f"not {type(merges).__name__}")
        for i, merge in enumerate(merges):
            if (not isinstance(merge, list) or len(merge) != 2
                    or any(type(x) is not int for x in merge)):
                raise MergesError(f"merge {i} is {json.dumps(merge)[:60]}, not a pair "
                                  "[left, right] of integer ids")
        return cls([(a, b) for a, b in merges], split)

    def to_text(self) -> str:
        """The JSON file's text: ``to_json()`` with one merge a line."""
        head = json.dumps({k: v for k, v in self.to_json().items() if k != "merges"})
        body = ",\n".join(f"  [{a}, {b}]" for a, b in self.merges)
        return head[:-1] + ', "merges": [' + ("\n" + body + "\n" if body else "") + "]}\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON to ``path`` atomically (a temporary file, renamed)."""
        atomic_write_text(path, self.to_text())


def load(path: str | os.PathLike) -> BPE:
    """The tokenizer saved at ``path``; ``MergesError`` (or ``DataError`` for a missing or
    unreadable file) naming the file and what is wrong."""
    from tinylm.data import read_file_bytes

    return from_bytes(read_file_bytes(path), str(path))


def from_bytes(raw: bytes, name: str) -> BPE:
    """The tokenizer of a merges file's bytes; ``MergesError`` naming the file ``name``."""
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise MergesError(f"merges file {name!r} is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise MergesError(f"merges file {name!r} is not JSON: {e.msg} at line {e.lineno}, "
                          f"column {e.colno}") from None
    try:
        return BPE.from_json(d)
    except MergesError as e:
        raise MergesError(f"merges file {name!r}: {e}") from None


def train(text: str | bytes, vocab_size: int, split: str = "none",
          progress: Progress | None = None, lines: bool = False) -> BPE:
    """Learn ``vocab_size - 256`` merges from ``text`` (fewer if it runs out of pairs);
    ``progress(done, total)`` after each merge. ``lines``: the text is items, one a line,
    and every "\\n" is a chunk of its own, so no merge crosses or holds a line end (the
    newline byte stays a token of its own: the end of an item)."""
    return train_sequence(text, vocab_size, split, progress, lines)[0]


def train_sequence(text: str | bytes, vocab_size: int, split: str = "none",
                   progress: Progress | None = None, lines: bool = False
                   ) -> tuple[BPE, np.ndarray]:
    """``train``'s tokenizer, and the token sequence of ``text`` that training ended with
    (which ``encode(text)`` gives again)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ConfigError(f"vocab_size must be an integer, not {type(vocab_size).__name__}")
    if not FIRST_ID <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"vocab_size {vocab_size} is out of range: at least {FIRST_ID} "
                          f"(the byte values) and at most {MAX_VOCAB:,}")
    check_split(split)
    data = as_bytes(text)
    seq = bpe_merge.Sequence(data, chunk_starts(data, split, lines), int(vocab_size),
                             count=True)
    merges = bpe_merge.learn(seq, int(vocab_size) - FIRST_ID, progress)
    bpe = BPE(merges, split)
    return bpe, seq.tokens().astype(bpe.dtype)


def check_split(split: Any) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}")


def as_bytes(text: str | bytes) -> bytes:
    """``text`` as UTF-8 bytes; a string that UTF-8 cannot hold (a lone surrogate) refused."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    if not isinstance(text, str):
        raise DataError(f"text must be a string or bytes, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"character {e.object[e.start]!r} at position {e.start} cannot be "
                        "encoded as UTF-8 (a lone surrogate)") from None


def chunk_starts(data: bytes, split: str, lines: bool = False) -> np.ndarray | None:
    """The byte offsets where the chunks of ``split`` begin (None: one chunk); with
    ``lines``, also every newline and the byte after it."""
    if lines:
        newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == NEWLINE)
        cuts = np.concatenate([newlines, newlines + 1])
        starts = chunk_starts(data, split)
        return cuts if starts is None else np.concatenate([starts, cuts])
    if split == "none":
        return None
    regex = _regex()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"split {split!r} reads text: byte 0x{data[e.start]:02x} at offset "
                        f"{e.start} is not UTF-8") from None
    # the pattern matches every character, so the chunks are the matches, end to end
    starts = np.fromiter((m.start() for m in regex.finditer(_compiled(regex), text)), np.int64)
    # the pattern's offsets count characters; the chunks cut the bytes
    points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    width = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    offsets = np.concatenate([[0], np.cumsum(width)])
    return offsets[starts]


def _regex() -> Any:
    try:
        import regex
    except ImportError:
        raise MissingDependency("the 'gpt4' split needs the regex package (its \\p{L} classes): "
                                "pip install regex") from None
    return regex


@functools.lru_cache(maxsize=1)
def _compiled(regex: Any) -> Any:
    return regex.compile(GPT4_PATTERN)


def _checked(merges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``merges`` as a list of pairs of ints, each id defined before the merge that uses it
    and no pair merged twice; ``MergesError`` otherwise."""
    checked: list[tuple[int, int]] = []
    seen: dict[tuple[int, int], int] = {}
    if FIRST_ID + len(merges) > MAX_VOCAB:
        raise MergesError(f"{len(merges):,} merges are more than tinylm supports")
    for i, merge in enumerate(merges):
        try:
            left, right = merge
            pair = (operator.index(left), operator.index(right))
        except (TypeError, ValueError):
            raise MergesError(f"merge {i} is {merge!r:.60}, not a pair (left, right) of "
                              "integer ids") from None
        for x in pair:
            if not 0 <= x < FIRST_ID + i:
                raise MergesError(f"merge {i} {list(pair)} makes id {FIRST_ID + i} from id {x}, "
                                  "which is not defined before it")
        if pair in seen:
            raise MergesError(f"merge {i} {list(pair)} repeats merge {seen[pair]}")
        seen[pair] = i
        checked.append(pair)
    return checked


def _token_bytes(merges: Sequence[tuple[int, int]]) -> list[bytes]:
    table = [bytes([i]) for i in range(FIRST_ID)]
    for a, b in merges:
        table.append(table[a] + table[b])
    return table
