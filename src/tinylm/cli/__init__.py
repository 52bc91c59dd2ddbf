"""The ``tinylm`` command line: argument parsing, dispatch, and error reporting.

``main(argv)`` is the whole program and returns an exit code, so tests call
it directly. This package is the only place in tinylm that prints or exits:
each subcommand's module turns parsed arguments into library calls and
prints what they return. A ``TinylmError`` from anywhere becomes one line on
stderr and exit code 2; a Ctrl-C becomes exit code 130.

Subcommands:
  train      train a model on a text file (n-gram or neural), write the run to -o DIR
  sample     print new items (or a passage) from a trained run
  eval       print the loss of a trained run on each split
  diagnose   print and plot training diagnostics of a trained neural run
  report     one self-contained HTML page about one or more runs
  serve      a local web page to sample from a trained run
  export     a run as a Hugging Face Transformers checkpoint or an ONNX model
  recipes    list the training recipes and what each sets
  micrograd  the scalar-autograd demo: a tiny MLP on a 2D toy dataset
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

import numpy as np

from tinylm import __version__, api, settings
from tinylm.cli import export, micrograd, neural, report, serve, train
from tinylm.cli.common import (
    CONSOLE, Parser, Terminated, UsageError, add_run_dir, run_dir_of,
)
from tinylm.errors import TinylmError
from tinylm.output import TEXT_PASSAGE, say_passage, say_samples


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
                            description="Load the model saved in DIR and print new items, "
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
    sample.add_argument("--prompt", default="", help="start every item (or the passage) with "
                        "this text (default: none)")
    sample.add_argument("--tokens", type=settings.POSITIVE_INT.parse, default=None, metavar="N",
                        help="write one continuous passage of N characters instead of items "
                        f"(a --format text run's default: {TEXT_PASSAGE})")
    sample.set_defaults(handler=_sample)

    evaluate = sub.add_parser("eval", help="print the loss of a trained run on each split",
                              description="Reload the run in DIR and print its loss and "
                              "perplexity on the train, val and test splits.")
    add_run_dir(evaluate, required=True)
    evaluate.set_defaults(handler=_eval)

    neural.register_diagnose(sub)
    report.register(sub)
    serve.register(sub)
    export.register(sub)
    train.register_recipes(sub)
    micrograd.register(sub, add_run_dir)
    return parser


def _sample(args: argparse.Namespace) -> int:
    run = api.load(args.out_dir)
    got = run.sample(args.num_samples, args.prompt, args.temperature, args.top_k, args.seed,
                     args.tokens)
    if isinstance(got, str):
        say_passage(CONSOLE, got, args.tokens or TEXT_PASSAGE, args.prompt)
    else:
        say_samples(CONSOLE, [(s.text, not s.new) for s in got], args.prompt)
    return 0


def _eval(args: argparse.Namespace) -> int:
    api.load(args.out_dir).evaluate(CONSOLE)
    return 0


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run tinylm with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    # SIGTERM ends the command as Ctrl-C does, with a line and an exit code, wherever it
    # lands (every write being atomic, a run directory keeps its last commit)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        run_dir_of(args, parser)
        # an overflow in a model's arithmetic shows in its results (a loss of inf, a
        # divergence caught by the trainer), not as numpy warnings on stderr
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return int(args.handler(args) or 0)
    except UsageError as e:
        print(f"{e}", file=sys.stderr)
        return 2
    except TinylmError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("tinylm: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("tinylm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`tinylm sample | head`): stop quietly, as Unix tools do;
        # point stdout at devnull so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:  # what the estimate before a run did not foresee
        print("tinylm: error: out of memory: the machine cannot hold what this command "
              "asked for; choose smaller settings (the run directory keeps its last commit)",
              file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission, a path too long: the run keeps its last commit
        where = f" {e.filename!r}" if e.filename else ""
        print(f"tinylm: error: cannot write or read{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
