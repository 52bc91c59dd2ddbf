"""The ``tinylm`` command line: argument parsing, dispatch, and error reporting.

``main(argv)`` is the whole program and returns an exit code, so tests call
it directly. This package is the only place in tinylm that prints or exits:
each subcommand's module turns parsed arguments into library calls and
prints what they return. A ``TinylmError`` from anywhere becomes one line on
stderr and exit code 2; a Ctrl-C becomes exit code 130.

Subcommands:
  train      train a model on a text file (n-gram or neural), write the run to -o DIR
  sample     print new items from a trained run
  eval       print the loss of a trained run on each split
  diagnose   print and plot training diagnostics of a trained neural run
  recipes    list the training recipes and what each sets
  micrograd  the scalar-autograd demo: a tiny MLP on a 2D toy dataset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from tinylm import __version__, settings
from tinylm.cli import micrograd, neural, ngram, train
from tinylm.cli.common import Parser, UsageError, add_run_dir
from tinylm.errors import CheckpointError, TinylmError
from tinylm.models import MODELS


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tinylm",
        description="A from-scratch character-level language-modeling toolkit. "
        "Give it a text file with one item per line; it learns to generate more items like them.",
        epilog="Run 'tinylm COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"tinylm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    train.register(sub)

    sample = sub.add_parser("sample", help="print new items from a trained run",
                            description="Load the model saved in -o DIR and print new items, "
                            "each marked new or copied from the training set.")
    add_run_dir(sample, required=True)
    sample.add_argument("-n", "--num-samples", type=settings.NONNEG_INT.parse, default=20,
                        metavar="N", help="how many items (default: 20)")
    sample.add_argument("--seed", type=settings.SEED.parse, default=42, metavar="S",
                        help="seed of the sampling RNG (default: 42)")
    sample.add_argument("--temperature", type=settings.POSITIVE_FLOAT.parse, default=1.0,
                        metavar="T", help="divide the logits by this: below 1 safer, above 1 "
                        "wilder (default: 1)")
    sample.add_argument("--top-k", type=settings.POSITIVE_INT.parse, default=None, metavar="K",
                        help="sample only among the k most likely tokens (default: all)")
    sample.add_argument("--prompt", default="", help="start every item with this text (default: none)")
    sample.set_defaults(handler=_sample)

    evaluate = sub.add_parser("eval", help="print the loss of a trained run on each split",
                              description="Reload the run in -o DIR and print its loss and "
                              "perplexity on the train, val and test splits.")
    add_run_dir(evaluate, required=True)
    evaluate.set_defaults(handler=_eval)

    neural.register_diagnose(sub)
    train.register_recipes(sub)
    micrograd.register(sub, add_run_dir)
    return parser


def _run_kind(out_dir: str) -> str:
    """The model family a run directory holds, from its config.json."""
    path = Path(out_dir) / "config.json"
    if not Path(out_dir).is_dir():
        raise CheckpointError(f"run directory {out_dir!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} not found: is {out_dir!r} a tinylm run directory?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        model = config["model"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{str(path)!r} is not a valid tinylm config") from None
    if model in train.COUNT_MODELS:
        return "ngram"
    if model in MODELS:
        return "neural"
    if model == "micrograd":
        raise CheckpointError(f"{out_dir!r} holds a micrograd demo run: it has no language model "
                              "to sample or evaluate (see its metrics.jsonl, regions.png and graph.svg)")
    raise CheckpointError(f"{str(path)!r} names an unknown model {model!r}")


def _sample(args: argparse.Namespace) -> int:
    return (ngram if _run_kind(args.out_dir) == "ngram" else neural).sample(args)


def _eval(args: argparse.Namespace) -> int:
    return (ngram if _run_kind(args.out_dir) == "ngram" else neural).evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run tinylm with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except UsageError as e:
        print(f"{e}", file=sys.stderr)
        return 2
    except TinylmError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinylm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`tinylm sample | head`): stop quietly, as Unix tools do;
        # point stdout at devnull so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
