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
  micrograd  the scalar-autograd demo: a tiny MLP on a 2D toy dataset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from tinylm import __version__, data
from tinylm.errors import CheckpointError, ConfigError, TinylmError

NGRAM_MODELS = ("ngram",)
NEURAL_MODELS = ("bigram", "mlp", "bnmlp", "wavenet")


def _number(cast: type, allow_zero: bool, what: str, bound: str):
    """An argparse type: a finite number of kind ``cast`` that is > 0 (or >= 0)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_positive_int = _number(int, False, "a whole number", "a positive whole number")
_nonneg_int = _number(int, True, "a whole number", "zero or more")
_positive_float = _number(float, False, "a number", "a positive finite number")
_nonneg_float = _number(float, True, "a number", "zero or a positive finite number")


def _seed(text: str) -> int:
    value = _positive_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be below 2**64, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we want the one clear line only."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def print_samples(marked: Sequence[tuple[str, bool]]) -> None:
    """Print sampled items, each marked as a copy of a training item or new."""
    if not marked:
        return
    width = max(len(item) for item, _ in marked)
    new = sum(not known for _, known in marked)
    print(f"samples ({new} of {len(marked)} new, not in the training set):")
    for item, known in marked:
        print(f"  {item:<{width}}  {'(copy of a training item)' if known else '(new)'}")


def _add_run_dir(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("-o", "--out-dir", default=None if required else "out",
                   required=required, metavar="DIR",
                   help="run directory" + ("" if required else " (default: out/)"))


def build_parser() -> argparse.ArgumentParser:
    from tinylm.cli import micrograd as micrograd_cmd
    from tinylm.cli import neural as neural_cmd
    from tinylm.cli import ngram as ngram_cmd

    parser = _Parser(
        prog="tinylm",
        description="A from-scratch character-level language-modeling toolkit. "
        "Give it a text file with one item per line; it learns to generate more items like them.",
        epilog="Run 'tinylm COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"tinylm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train", help="train a model and write the run to -o DIR",
        description="Train a model on a text file (one item per line; default: the bundled "
        "32,033 names), write metrics.jsonl, config.json and the model into -o DIR, "
        "and print samples marked new or copied from the training set.",
    )
    train.add_argument("-i", "--input", default=None, metavar="FILE",
                       help="UTF-8 text file, one item per line (default: the bundled names)")
    _add_run_dir(train, required=False)
    train.add_argument("--model", default=None, choices=NGRAM_MODELS + NEURAL_MODELS,
                       help="which model to train (default: the --recipe's model, else ngram)")
    train.add_argument("--loader", default=None, choices=data.LOADERS,
                       help="words: each line an independent item (default); "
                       "stream: one continuous text, for the classic reference figures")
    train.add_argument("--seed", type=_seed, default=None,
                       help="seed of the run's RNG (initialisation, batches, sampling)")
    train.add_argument("-n", "--num-samples", type=_nonneg_int, default=10,
                       help="samples to print at the end (default: 10)")
    ngram_group = train.add_argument_group("n-gram options")
    ngram_cmd.add_train_arguments(ngram_group)
    neural_group = train.add_argument_group("neural-network options")
    neural_cmd.add_train_arguments(neural_group)
    # each family's flags, so that a flag given to the other family is refused, not ignored
    train.set_defaults(handler=_train, family_flags={
        "ngram": _group_flags(ngram_group), "neural": _group_flags(neural_group)})

    sample = sub.add_parser("sample", help="print new items from a trained run",
                            description="Load the model saved in -o DIR and print new items, "
                            "each marked new or copied from the training set.")
    _add_run_dir(sample, required=True)
    sample.add_argument("-n", "--num-samples", type=_nonneg_int, default=20, help="how many items")
    sample.add_argument("--seed", type=_seed, default=42, help="seed of the sampling RNG")
    sample.add_argument("--temperature", type=_positive_float, default=1.0,
                        help="divide the logits by this (below 1: safer, above 1: wilder)")
    sample.add_argument("--top-k", type=_positive_int, default=None,
                        help="sample only among the k most likely tokens")
    sample.add_argument("--prompt", default="", help="start every item with this text")
    sample.set_defaults(handler=_sample)

    evaluate = sub.add_parser("eval", help="print the loss of a trained run on each split",
                              description="Reload the run in -o DIR and print its loss and "
                              "perplexity on the train, val and test splits.")
    _add_run_dir(evaluate, required=True)
    evaluate.set_defaults(handler=_eval)

    neural_cmd.register_diagnose(sub, _add_run_dir)
    micrograd_cmd.register(sub, _add_run_dir)
    return parser


def _group_flags(group: argparse._ArgumentGroup) -> list[tuple[str, str, object]]:
    """(dest, option string, default) of every flag in an argument group."""
    return [(a.dest, a.option_strings[-1], a.default) for a in group._group_actions]


def _train(args: argparse.Namespace) -> int:
    from tinylm.cli import neural, ngram
    from tinylm.recipes import get_recipe

    if args.model is None:
        args.model = get_recipe(args.recipe)["model"] if args.recipe else "ngram"
    family = "ngram" if args.model in NGRAM_MODELS else "neural"
    other = "neural" if family == "ngram" else "ngram"
    for dest, option, default in args.family_flags[other]:
        if getattr(args, dest) != default:
            raise ConfigError(f"{option} does not apply to --model {args.model}")
    return (ngram if family == "ngram" else neural).train(args)


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
    if model in NGRAM_MODELS:
        return "ngram"
    if model in NEURAL_MODELS:
        return "neural"
    if model == "micrograd":
        raise CheckpointError(f"{out_dir!r} holds a micrograd demo run: it has no language model "
                              "to sample or evaluate (see its metrics.jsonl, regions.png and graph.svg)")
    raise CheckpointError(f"{str(path)!r} names an unknown model {model!r}")


def _sample(args: argparse.Namespace) -> int:
    from tinylm.cli import neural, ngram

    return (ngram if _run_kind(args.out_dir) == "ngram" else neural).sample(args)


def _eval(args: argparse.Namespace) -> int:
    from tinylm.cli import neural, ngram

    return (ngram if _run_kind(args.out_dir) == "ngram" else neural).evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run tinylm with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except _UsageError as e:
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
