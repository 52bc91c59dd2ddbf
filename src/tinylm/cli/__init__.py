"""The ``tinylm`` command line: the parser assembled from its commands, dispatch, and
error reporting.

``main(argv)`` is the whole program and returns an exit code, so tests call
it directly. This package is the only place in tinylm that prints or exits:
each subcommand has its own module (cli/train.py, cli/sample.py, ...), which
registers its flags and turns parsed arguments into library calls and prints
what they return. A ``TinylmError`` from anywhere becomes one line on
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
  bpe        train a byte-level BPE tokenizer on a text file; encode and decode with one
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

import numpy as np

from tinylm import __version__
from tinylm.cli import (
    bpe, diagnose, evaluate, export, micrograd, recipes, report, sample, serve, train,
)
from tinylm.cli.common import Parser, Terminated, UsageError, run_dir_of
from tinylm.errors import TinylmError

# one module a command, each with its register(sub); in the order of the help's list
COMMANDS = (train, sample, evaluate, diagnose, report, serve, export, recipes, micrograd, bpe)


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
    for command in COMMANDS:
        command.register(sub)
    return parser


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
