"""``tinylm train``: flags made from the settings, then the library's run.

Every model and training flag is made from a field of ``ModelConfig``,
``TrainConfig`` or ``NgramSettings`` (tinylm.settings): its default, its
check and its help line are declared there, once. The run itself is
``tinylm.api.run_training``, the same as the Python API's ``tinylm.train``;
this module parses the flags and prints what the run says.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os

from tinylm import api, distributed, settings
from tinylm.api import SETTINGS, model_names
from tinylm.cli.common import CONSOLE, add_command, add_run_dir
from tinylm.models import MODEL_DEFAULTS, ModelConfig
from tinylm.ngram import NgramSettings
from tinylm.recipes import RECIPES, recipe_names
from tinylm.tokenizer import TokenizerSettings
from tinylm.train_config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand, a flag for every setting."""
    p = add_command(
        sub, "train", run, help="train a model and write the run to -o DIR",
        description="Train a model on a text file (--format lines: one item per line, the "
        "default, and the bundled 32,033 names if no file is given; --format text: one "
        "continuous document, kept character for character), write metrics.jsonl, config.json and the model into -o DIR, "
        "and print samples marked new or copied from the training set. Every model reads "
        "characters, or with --tokenizer bpe --vocab-size N the tokens of a byte-level BPE "
        "learned on the train split (kept in the run as merges.json); losses are printed in "
        "nats per token and in bits per character, which compare the two. A flag that the "
        "chosen model does not read is refused.",
        epilog="recipes (tinylm recipes NAME lists what each sets): "
        + "; ".join(f"{name}: {RECIPES[name].about}" for name in recipe_names()),
    )
    inputs = p.add_argument_group("data and run directory")
    inputs.add_argument("-i", "--input", default=None, metavar="FILE",
                        help="UTF-8 text file (default: the bundled names). --format lines: "
                        "one item per line, split 1000/1000/rest (10%% each for small files) "
                        "by a seeded shuffle; --format text: the first 90%%, the next 5%% and "
                        "the last 5%% (cut at line ends) are train, val and test")
    inputs.add_argument("--train", default=None, metavar="FILE",
                        help="the train split, for data that comes split (with --val/--test)")
    inputs.add_argument("--val", default=None, metavar="FILE",
                        help="the val split (default: split off --train)")
    inputs.add_argument("--test", default=None, metavar="FILE",
                        help="the test split (default: split off --train)")
    add_run_dir(inputs, required=False)
    inputs.add_argument("-n", "--num-samples", type=settings.NONNEG_INT.parse, default=10,
                        metavar="N", help="samples to print at the end (default: 10)")
    inputs.add_argument("--resume", action="store_true",
                        help="continue the neural run saved in -o DIR, bit-identical to not "
                        "stopping; it keeps its model and settings (--steps may extend it)")
    inputs.add_argument("--model", default=None, choices=model_names(),
                        help="which model to train (default: the --recipe's model, else ngram)")
    groups = (("tokenizer settings", TokenizerSettings), ("model settings (neural)", ModelConfig),
              ("training settings", TrainConfig), ("n-gram settings", NgramSettings))
    for title, cls in groups:
        settings.add_flags(p.add_argument_group(title), cls, _default_note)


def _default_note(f: dataclasses.Field) -> str:
    """"(default: X; bigram: Y)": the field's default and every model's own."""
    if "(default" in settings.spec(f)["help"]:
        return ""
    kind = settings.spec(f)["kind"]
    own = {}
    for model, defaults in MODEL_DEFAULTS.items():
        if f.name in defaults and defaults[f.name] != f.default:
            own.setdefault(settings.show(defaults[f.name], kind), []).append(model)
    extra = "".join(f"; {', '.join(models)}: {value}" for value, models in own.items())
    return f"(default: {settings.show(f.default, kind)}{extra})".replace("%", "%%")


def run(args: argparse.Namespace) -> int:
    world = distributed.from_environment()
    if not world.distributed:
        return _train(args, world, distributed.Gate(world))
    return _train_together(args, world)


def _train(args: argparse.Namespace, world: distributed.World, gate: distributed.Gate) -> int:
    api.run_training(settings.given(args, SETTINGS), model=args.model, input=args.input,
                     out_dir=args.out_dir, train=args.train, val=args.val, test=args.test,
                     resume=args.resume, num_samples=args.num_samples, output=CONSOLE,
                     world=world, gate=gate)
    return 0


def _train_together(args: argparse.Namespace, world: distributed.World) -> int:
    """One process of a torchrun job: set up with the others, train, leave the group.

    Only process 0 prints; a failure in setting up is reported once, by the
    first process that failed, and stops every process before anything is written."""
    with contextlib.ExitStack() as stack:
        if not world.main:
            stack.enter_context(contextlib.redirect_stdout(
                stack.enter_context(open(os.devnull, "w"))))
        distributed.start(world)
        stack.callback(distributed.stop)
        # setting up is a stage all get through or none does; neural_run.train passes its gate
        with distributed.together(world) as gate:
            return _train(args, world, gate)
