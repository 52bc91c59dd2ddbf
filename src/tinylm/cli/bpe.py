"""``tinylm bpe``: train a byte-level BPE tokenizer on a text file, and encode or decode
with one (tinylm.bpe; docs/bpe.md)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from tinylm import bpe, settings
from tinylm.cli.common import CONSOLE, add_command
from tinylm.errors import ConfigError, DataError
from tinylm.io import atomic_write_with
from tinylm.output import progress_bar
from tinylm.text import read_text

ABOUT = ("A byte-level BPE tokenizer: the vocabulary starts as the 256 byte values of UTF-8 "
         "text, and training merges the most frequent adjacent pair into a new token, again "
         "and again (ties: the smallest pair), until the vocabulary has N tokens. Input files "
         "are read as tinylm reads any text: UTF-8, line ends made \\n.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bpe`` subcommand and its ``train``, ``encode`` and ``decode``."""
    p = add_command(sub, "bpe", lambda args: args.bpe_handler(args),
                    help="train a byte-level BPE tokenizer; encode and decode with one",
                    description=ABOUT, epilog="Run 'tinylm bpe COMMAND --help' for each.")
    actions = p.add_subparsers(dest="bpe_command", metavar="COMMAND", parser_class=type(p))
    actions.required = True

    t = actions.add_parser("train", help="learn merges from a text file, write them as JSON",
                           description="Learn N - 256 merges from FILE and write the tokenizer "
                           "to -o (JSON, written whole or not at all). " + ABOUT)
    t.add_argument("file", metavar="FILE", help="the training text (UTF-8)")
    t.add_argument("--vocab-size", type=settings.POSITIVE_INT.parse, required=True, metavar="N",
                   help="tokens in the vocabulary: 256 bytes + the merges (at least 256); "
                   "fewer if the text runs out of pairs")
    t.add_argument("--bpe-split", choices=bpe.SPLITS, default="none",
                   help="none: the file is one sequence; gpt4: cut first by GPT-4's "
                   "pre-tokenizer pattern, no merge across a cut (needs the regex package) "
                   "(default: none)")
    t.add_argument("-o", "--out", required=True, metavar="MERGES.json",
                   help="where to write the tokenizer")
    t.set_defaults(bpe_handler=train)

    e = actions.add_parser("encode", help="encode a text file, print a summary",
                           description="Encode FILE with the tokenizer in MERGES.json and print "
                           "how many tokens it takes and how many bytes a token holds on "
                           "average; --out saves the ids as a .npy array.")
    e.add_argument("merges", metavar="MERGES.json", help="a tokenizer from 'tinylm bpe train'")
    e.add_argument("file", metavar="FILE", help="the text to encode (UTF-8)")
    e.add_argument("--out", metavar="IDS.npy", default=None,
                   help="save the token ids (uint16, or uint32 past 65,536 tokens)")
    e.set_defaults(bpe_handler=encode)

    d = actions.add_parser("decode", help="print the text of saved token ids",
                           description="Print the text of the ids in IDS.npy (from 'tinylm bpe "
                           "encode --out'): their bytes as UTF-8, a broken character as U+FFFD.")
    d.add_argument("merges", metavar="MERGES.json", help="the tokenizer that made the ids")
    d.add_argument("ids", metavar="IDS.npy", help="a 1-D array of token ids")
    d.set_defaults(bpe_handler=decode)


def train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    # refused before a long training, not after it
    if out.is_dir():
        raise ConfigError(f"-o {args.out!r} is a directory; name the file to write")
    if not out.parent.resolve().is_dir():
        raise ConfigError(f"-o {args.out!r}: the directory {str(out.parent)!r} does not exist")
    if args.vocab_size < bpe.FIRST_ID:
        raise ConfigError(f"--vocab-size {args.vocab_size} is below {bpe.FIRST_ID}, "
                          "the byte values every vocabulary starts with")
    data = read_text(args.file)
    start = time.perf_counter()
    asked = args.vocab_size - bpe.FIRST_ID
    with progress_bar(CONSOLE, "bpe train", asked, "merge") as progress:
        tokenizer, ids = bpe.train_sequence(data, args.vocab_size, args.bpe_split, progress)
    seconds = time.perf_counter() - start
    tokenizer.save(out)
    short = (f" (the text ran out of pairs after {len(tokenizer.merges):,})"
             if len(tokenizer.merges) < asked else "")
    CONSOLE.say(f"learned {len(tokenizer.merges):,} merges{short} from {len(data):,} bytes in "
                f"{seconds:.1f} s: vocabulary {tokenizer.vocab_size:,}, split {args.bpe_split}")
    CONSOLE.say(f"{args.file}: {len(ids):,} tokens, {_per_token(len(data), len(ids))}")
    CONSOLE.say(f"wrote {args.out}")
    return 0


def encode(args: argparse.Namespace) -> int:
    tokenizer = bpe.load(args.merges)
    if args.out is not None and not Path(args.out).parent.resolve().is_dir():
        raise ConfigError(f"--out {args.out!r}: the directory does not exist")
    data = read_text(args.file)
    start = time.perf_counter()
    ids = tokenizer.encode(data)
    seconds = time.perf_counter() - start
    CONSOLE.say(f"{args.file}: {len(data):,} bytes -> {len(ids):,} tokens, "
                f"{_per_token(len(data), len(ids))} ({seconds:.2f} s)")
    if args.out is not None:
        atomic_write_with(args.out, lambda f: np.save(f, ids, allow_pickle=False))
        CONSOLE.say(f"wrote {args.out}")
    return 0


def decode(args: argparse.Namespace) -> int:
    tokenizer = bpe.load(args.merges)
    name = args.ids
    if not os.path.isfile(name):
        raise DataError(f"ids file {name!r} does not exist or is not a file")
    with open(name, "rb") as f:
        if f.read(6) != NPY_MAGIC:
            raise DataError(f"ids file {name!r} is not a .npy array (from 'tinylm bpe encode "
                            "--out')")
    try:
        ids = np.load(name, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"ids file {name!r} is not a readable .npy array: {why}") from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise DataError(f"ids file {name!r} holds {getattr(ids, 'dtype', '?')} of shape "
                        f"{getattr(ids, 'shape', '?')}, not a 1-D array of token ids")
    print(tokenizer.decode(ids), end="", flush=True)
    return 0


NPY_MAGIC = b"\x93NUMPY"


def _per_token(n_bytes: int, n_tokens: int) -> str:
    return f"{n_bytes / n_tokens:.2f} bytes per token" if n_tokens else "no tokens"
