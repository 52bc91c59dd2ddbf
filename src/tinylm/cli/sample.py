"""``tinylm sample``: new items, or one passage, from a trained run, printed."""

from __future__ import annotations

import argparse

from tinylm import api, settings
from tinylm.cli.common import CONSOLE, add_command, add_run_dir
from tinylm.output import TEXT_PASSAGE, say_passage, say_samples


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sample`` subcommand."""
    p = add_command(sub, "sample", run, help="print new items from a trained run",
                    description="Load the model saved in DIR and print new items, "
                    "each marked new or copied from the training set.")
    add_run_dir(p, required=True)
    p.add_argument("-n", "--num-samples", type=settings.NONNEG_INT.parse, default=20,
                   metavar="N", help="how many items (default: 20)")
    p.add_argument("--seed", type=settings.SEED.parse, default=42, metavar="S",
                   help="seed of the sampling RNG (default: 42)")
    p.add_argument("--temperature", type=settings.POSITIVE_FLOAT.parse, default=1.0,
                   metavar="T", help="divide the logits by this: below 1 safer, above 1 "
                   "wilder (default: 1)")
    p.add_argument("--top-k", type=settings.POSITIVE_INT.parse, default=None, metavar="K",
                   help="sample only among the k most likely tokens (default: all)")
    p.add_argument("--prompt", default="", help="start every item (or the passage) with "
                   "this text (default: none)")
    p.add_argument("--tokens", type=settings.POSITIVE_INT.parse, default=None, metavar="N",
                   help="write one continuous passage of N tokens (characters, for a char "
                   f"run) instead of items (a --format text run's default: {TEXT_PASSAGE})")


def run(args: argparse.Namespace) -> int:
    opened = api.load(args.out_dir)
    got = opened.sample(args.num_samples, args.prompt, args.temperature, args.top_k, args.seed,
                        args.tokens)
    if isinstance(got, str):
        say_passage(CONSOLE, got, args.tokens or TEXT_PASSAGE, args.prompt, opened.tokenizer.unit)
    else:
        say_samples(CONSOLE, [(s.text, not s.new) for s in got], args.prompt)
    return 0
