"""Time tinylm.bpe on 10 MB of Python: training 4,096 merges and encoding, beside the
Hugging Face ``tokenizers`` BPE trainer on the same text.

Usage: python benchmarks/bench_bpe.py [--quick] [--mb 10] [--merges 4096] [--no-hf]

The text is the Python standard library's own sources: the ``*.py`` files under the
directory of ``os.__file__``, sorted by path, concatenated until ``--mb`` MB (10**6
bytes; the last file cut), so the figures can be made again on any machine with the
same Python. ``--quick`` uses 1 MB.

Everything runs on one thread (``OMP_NUM_THREADS`` and the like are set before numpy is
imported, and ``TOKENIZERS_PARALLELISM=false``, ``RAYON_NUM_THREADS=1`` for tokenizers).
tinylm is timed with both splits: ``none`` (the whole text is one sequence; the targets
below are for it) and ``gpt4`` (cut first by GPT-4's pattern).

Hugging Face's trainer is set up as close as it allows: a ``BPE`` model, the
``ByteLevel`` pre-tokenizer (bytes mapped to 256 printable characters, its alphabet
given as the initial alphabet, no prefix space), ``vocab_size`` 256 + merges, no special
tokens. What differs: its ByteLevel pre-tokenizer always cuts by GPT-2's pattern (with
``use_regex=False`` the 10 MB would be one word, which its word-based trainer is not
made for), so it is closest to tinylm's ``gpt4`` split, not to ``none``; it breaks
count ties its own way; and it counts a word's pairs once per distinct word, weighted.

Targets (one core): 4,096 merges learned from 10 MB in under 60 s, and the 10 MB encoded
in under 10 s, with the ``none`` split. Prints each time, bytes per token, peak memory,
the machine's load average before and after, and whether the targets are met.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tinylm import bpe  # noqa: E402

TRAIN_TARGET_S = 60.0
ENCODE_TARGET_S = 10.0


def corpus(megabytes: float) -> tuple[bytes, int]:
    """The standard library's sources, sorted, concatenated to ``megabytes`` MB; and how
    many files that took."""
    want = int(megabytes * 1e6)
    out = bytearray()
    files = 0
    for path in sorted(Path(os.path.dirname(os.__file__)).rglob("*.py")):
        try:
            raw = path.read_bytes()
            raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out += raw[:want - len(out)]
        files += 1
        if len(out) >= want:
            break
    return bytes(out), files


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def met(seconds: float, target: float) -> str:
    return f"target < {target:.0f} s {'met' if seconds < target else 'NOT met'}"


def bench_tinylm(text: bytes, merges: int, split: str) -> tuple[float, float]:
    start = time.perf_counter()
    tokenizer, trained = bpe.train_sequence(text, 256 + merges, split)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    encode_s = time.perf_counter() - start
    assert np.array_equal(ids, trained), "encoding the training text must give training's sequence"
    assert tokenizer.decode_bytes(ids) == text
    print(f"tinylm, split {split}: {len(tokenizer.merges):,} merges in {train_s:.2f} s; "
          f"encode {encode_s:.2f} s; {len(ids):,} tokens, {len(text) / len(ids):.3f} bytes "
          f"per token (peak memory so far {peak_mb():,.0f} MB; load {load()})")
    return train_s, encode_s


def bench_hf(text: bytes, merges: int) -> None:
    try:
        import tokenizers
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        print("Hugging Face tokenizers: not installed, skipped")
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    string = text.decode("utf-8")
    start = time.perf_counter()
    tok.train_from_iterator([string], trainer=trainer)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    n = len(tok.encode(string).ids)
    encode_s = time.perf_counter() - start
    print(f"HF tokenizers {tokenizers.__version__} (ByteLevel, GPT-2 pre-split): vocabulary "
          f"{tok.get_vocab_size():,} in {train_s:.2f} s; encode {encode_s:.2f} s; {n:,} tokens, "
          f"{len(text) / n:.3f} bytes per token (load {load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MB instead of 10")
    parser.add_argument("--mb", type=float, default=None, help="megabytes of text (default 10)")
    parser.add_argument("--merges", type=int, default=4096, help="merges to learn (default 4096)")
    parser.add_argument("--no-hf", action="store_true", help="leave Hugging Face out")
    args = parser.parse_args()
    megabytes = args.mb if args.mb is not None else (1.0 if args.quick else 10.0)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}"
          f"; Python {platform.python_version()}, numpy {np.__version__}; one thread")
    print(f"load average before: {load()}")
    text, files = corpus(megabytes)
    print(f"text: {len(text):,} bytes, the first {files} .py files (sorted) under "
          f"{os.path.dirname(os.__file__)}, concatenated")
    times = {split: bench_tinylm(text, args.merges, split) for split in bpe.SPLITS}
    if not args.no_hf:
        bench_hf(text, args.merges)
    train_s, encode_s = times["none"]
    full = megabytes >= 10 and args.merges >= 4096
    scope = "" if full else f" (at {megabytes:g} MB and {args.merges:,} merges, not the targets' size)"
    print(f"targets{scope}: train {train_s:.1f} s, {met(train_s, TRAIN_TARGET_S)}; "
          f"encode {encode_s:.1f} s, {met(encode_s, ENCODE_TARGET_S)}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
