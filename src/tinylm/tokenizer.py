"""The tokenizer of a run: characters, or a byte-level BPE learned from the run's train
split. One interface that both satisfy, their settings, and how a run keeps one.

``--tokenizer char`` (the default) is ``tinylm.data.Tokenizer``: one token a character,
"\\n" token 0. ``--tokenizer bpe --vocab-size N [--bpe-split none|gpt4]`` is
``BPETokenizer``: ``tinylm.bpe`` trained on the train split alone (val and test are
never seen by it, as they are never seen by the model), N ids at most. Everything that
turns text into ids and back goes through what both have:

    vocab_size, eot      ids 0..vocab_size-1; eot ends an item and is the context before a text
    encode(text)         a string's ids, a list
    decode(ids)          the text of ids: never fails on an id of the vocabulary (a BPE
                         shows a character cut in two as U+FFFD)
    encode_bytes(data, out, progress)   a document's UTF-8 bytes as ids (what tokens.npy holds)
    itos                 each id as text, to show (serve's bars, the bigram picture)
    unit, note           "character" or "token", and what a vocabulary line adds
    files                the names of the files it keeps in a run (none for characters)
    to_run()             what the manifest says of it, and those files' bytes

**The end token of a BPE** is the newline byte's own id, 10. A BPE for items
(``--format lines``) is trained on the items as chunks that no merge crosses, every
"\\n" a chunk of its own, so no other token holds a newline: an item's tokens never
include 10, the sampler stops exactly where the model draws it, and it decodes to the
"\\n" it stands for, so a line end counts as one character in bits per character, as it
does for a char run. A BPE for a text merges across newlines (indentation tokens), and
10 is then only the context before a split's first byte, as "\\n" is for characters.

**How a run keeps it.** A char run keeps its vocabulary in the manifest (``"vocab"``), as
runs always have. A BPE run keeps its merges as ``merges.json`` (the tinylm-bpe format of
``tinylm.bpe``, which ``tinylm bpe encode`` reads too), listed with its SHA-256 in the
manifest's files like the splits, and its settings under ``"tokenizer"``; ``from_run`` is
the one reader of both.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from tinylm import bpe, data, memory, settings, text
from tinylm.errors import ConfigError, DataError
from tinylm.output import SILENT, Output, progress_bar
from tinylm.settings import POSITIVE_INT, choice, optional, setting

TOKENIZERS = ("char", "bpe")
MERGES_FILE = "merges.json"
# the manifest keys a tokenizer is kept under: a char run's vocabulary, a BPE run's settings
RUN_KEYS = ("vocab", "tokenizer")
# bytes of memory training takes per byte of text at its peak (docs/bpe.md: about 60)
TRAIN_BYTES = 64


class Tokenizer(Protocol):
    """What ``data.Tokenizer`` (characters) and ``BPETokenizer`` both offer; the rest of
    tinylm holds one of them through this and never asks which."""

    unit: str  # "character" or "token"
    note: str  # what the vocabulary line of a run adds ("" for characters)
    # the files it keeps in a run, named without making them (to_run serialises them)
    files: tuple[str, ...]

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot(self) -> int: ...

    @property
    def itos(self) -> Sequence[str]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_bytes(self, data: bytes | memoryview, out: np.ndarray | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray: ...

    def to_run(self) -> tuple[dict[str, Any], dict[str, bytes]]: ...


@dataclass(frozen=True)
class TokenizerSettings(settings.Settings):
    """Which tokenizer a run learns (see tinylm.settings for how fields are flags)."""

    tokenizer: str = setting(
        "char", "char: one token a character of the data, '\\n' the end of an item; bpe: a "
        "byte-level BPE learned on the train split alone (never val or test), --vocab-size "
        "tokens (--format lines: the items learned apart, each ending at the newline byte's "
        "token; --format text: merges cross line ends); every loss is printed per token and in "
        "bits per character, so the two compare",
        choice(TOKENIZERS), models=None)
    vocab_size: int | None = setting(
        None, "--tokenizer bpe: tokens in its vocabulary, the 256 byte values plus the merges "
        "learned (at least 256; fewer if the train split runs out of pairs) (default: none; "
        "required with --tokenizer bpe)", optional(POSITIVE_INT, "a positive whole number"),
        models=None)
    bpe_split: str | None = setting(
        None, "--tokenizer bpe: none: merges cross spaces, punctuation and line ends (a "
        "token of indentation); gpt4: no merge across GPT-4's pre-tokenizer cuts (needs the "
        "regex package) (default: none)", optional(choice(bpe.SPLITS), "none or gpt4"),
        models=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer != "bpe":
            for name, value in (("--vocab-size", self.vocab_size), ("--bpe-split", self.bpe_split)):
                if value is not None:
                    raise ConfigError(f"{name} applies to --tokenizer bpe; a char run's "
                                      "vocabulary is the characters of its data")
            return
        if self.vocab_size is None:
            raise ConfigError(f"--tokenizer bpe needs --vocab-size N: at least {bpe.FIRST_ID} "
                              "(the byte values) plus the merges to learn")
        if not bpe.FIRST_ID <= self.vocab_size <= bpe.MAX_VOCAB:
            raise ConfigError(f"--vocab-size {self.vocab_size} is out of range: a byte-level "
                              f"BPE has at least the {bpe.FIRST_ID} byte values and at most "
                              f"{bpe.MAX_VOCAB:,} tokens")

    @property
    def split(self) -> str:
        return self.bpe_split or "none"


class BPETokenizer:
    """A run's byte-level BPE (``tinylm.bpe.BPE``) behind the interface of the char tokenizer."""

    unit = "token"
    eot = bpe.NEWLINE
    files = (MERGES_FILE,)

    def __init__(self, model: bpe.BPE, chosen: TokenizerSettings) -> None:
        self.model = model
        self.settings = chosen

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def note(self) -> str:
        return f" (byte-level BPE of the train split, split {self.model.split})"

    @functools.cached_property
    def itos(self) -> tuple[str, ...]:
        """Each token's bytes read as UTF-8, a part of a character as U+FFFD."""
        return tuple(self.model.token_bytes(i).decode("utf-8", errors="replace")
                     for i in range(self.vocab_size))

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(np.asarray(ids, dtype=np.int64))

    def encode_bytes(self, data: bytes | memoryview, out: np.ndarray | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """A document's ids, into the start of ``out`` if given; the whole text at once."""
        ids = self.model.encode(bytes(data))
        if out is None:
            out = np.empty(len(ids), dtype=text.token_dtype(self.vocab_size))
        out[:len(ids)] = ids
        if progress is not None:
            progress(len(data), len(data))
        return out[:len(ids)]

    def to_run(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        return ({"tokenizer": {**self.settings.to_dict(), "bpe_split": self.model.split,
                               "file": MERGES_FILE}},
                {MERGES_FILE: self.model.to_text().encode("utf-8")})


def build(chosen: TokenizerSettings, splits: Sequence[Any], text_format: bool,
          output: Output = SILENT) -> Tokenizer:
    """The tokenizer of a new run whose three splits are ``splits`` (lists of lines, or with
    ``text_format`` the document's parts as UTF-8 bytes). A char tokenizer holds the
    characters of every split (none is unknown in val or test); a BPE is learned from the
    train split alone, said through ``output``."""
    if chosen.tokenizer == "char":
        if text_format:
            return text.tokenizer_of(splits)
        return data.Tokenizer.from_lines([line for lines in splits for line in lines])
    train = bytes(splits[0]) if text_format else \
        "".join(line + data.EOT for line in splits[0]).encode("utf-8")
    memory.check(memory.Estimate({"training the BPE tokenizer": TRAIN_BYTES * len(train)}),
                 "give a smaller input or --tokenizer char")
    asked = chosen.vocab_size - bpe.FIRST_ID
    start = time.perf_counter()
    with progress_bar(output, "bpe", asked, "merge") as bar:
        model = bpe.train(train, chosen.vocab_size, chosen.split, bar, lines=not text_format)
    short = "; the train split ran out of pairs" if len(model.merges) < asked else ""
    output.say(f"tokenizer: byte-level BPE, {model.vocab_size:,} tokens ({len(model.merges):,} "
               f"merges{short}) learned on the train split ({len(train):,} bytes) in "
               f"{time.perf_counter() - start:.1f} s")
    return BPETokenizer(model, chosen)


def settings_of(manifest: dict) -> TokenizerSettings:
    """The tokenizer settings a run was made with (runs made before them: characters)."""
    entry = manifest.get("tokenizer")
    if entry is None:
        return TokenizerSettings()
    if not isinstance(entry, dict):
        raise ConfigError("the manifest's tokenizer entry is not an object")
    return TokenizerSettings.from_dict({k: v for k, v in entry.items() if k != "file"})


def from_run(manifest: dict, read: Callable[[str], bytes]) -> Tokenizer:
    """The tokenizer a run keeps: its manifest's vocabulary, or the merges file named there,
    its bytes from ``read(name)`` (which checks them against the manifest's SHA-256)."""
    chosen = settings_of(manifest)
    if chosen.tokenizer == "char":
        return data.Tokenizer.from_list(manifest["vocab"])
    name = manifest["tokenizer"]["file"]
    if name != MERGES_FILE:
        raise DataError(f"the tokenizer file is {name!r}, not {MERGES_FILE}")
    model = bpe.from_bytes(read(name), name)
    if model.split != chosen.split:
        raise DataError(f"{name} says split {model.split!r}, the manifest {chosen.split!r}")
    return BPETokenizer(model, chosen)


def run_entry(manifest: dict) -> dict[str, Any]:
    """The part of a run's manifest that keeps its tokenizer (what a resumed run keeps)."""
    return {key: manifest[key] for key in RUN_KEYS if key in manifest}
