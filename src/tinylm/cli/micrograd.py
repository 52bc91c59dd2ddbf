"""``tinylm micrograd``: train a tiny MLP with the scalar autograd engine and show it.

Turns the flags into a ``DemoConfig``, runs ``tinylm.micrograd.demo`` and
prints the losses every 10 steps, the test accuracy and where the files
went; with ``--html`` it also writes the interactive page
(``tinylm.micrograd.page``). The defaults are the reference recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinylm.cli.common import DefaultsHelpFormatter, add_command
from tinylm.errors import ConfigError
from tinylm.io import check_out_dir
from tinylm.runs import MANIFEST

from tinylm.micrograd.datasets import DATASETS
from tinylm.micrograd.demo import DemoConfig, run_demo
from tinylm.micrograd.page import write_page

DEFAULT_OUT_DIR = "out/micrograd"
PRINT_EVERY = 10


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``micrograd`` subcommand."""
    d = DemoConfig()
    p = add_command(
        sub, "micrograd", run,
        help="the scalar-autograd demo: a tiny MLP on a 2D toy dataset",
        description="Train a tiny multi-layer perceptron, built from scalar Values that "
        "backpropagate by themselves, to classify 2D points. Writes into -o DIR: "
        "metrics.jsonl (train loss every step, val loss every 10 steps, test accuracy), "
        "regions.png (the decision regions over the data), graph.dot and graph.svg "
        "(one forward/backward pass through the trained model for one point, every node "
        "with its data and grad; the SVG needs Graphviz's 'dot'). With --html also "
        "micrograd.html: one self-contained page (open it from disk, nothing is fetched) "
        "that re-runs the same training in the browser, step by step, with the decision "
        "surface, the graph of a point you click, and every parameter's value, grad and "
        "AdamW moments. "
        "The defaults are the reference recipe: yinyang data (100 points), MLP(2, [8, 3]), "
        "AdamW, 100 steps, seed 42.",
        formatter_class=DefaultsHelpFormatter,
    )
    # Not add_run_dir: its default, out/, is where 'tinylm train' writes its run.
    p.add_argument("-o", "--out-dir", default=DEFAULT_OUT_DIR, metavar="DIR",
                   help="directory for the run's files")
    p.add_argument("--dataset", default=d.dataset, choices=tuple(DATASETS),
                   help="the 2D toy dataset")
    p.add_argument("--points", type=int, default=d.points, metavar="N",
                   help="how many points (80%% train, 10%% val, 10%% test; at least 10)")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden), metavar="N",
                   help="hidden layer sizes, e.g. --hidden 16 16 (the output layer has "
                   "one logit per class)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the one RNG that draws the data, then the weights")
    p.add_argument("--html", action="store_true",
                   help="also write micrograd.html, the interactive page, into DIR")


def _check_demo_dir(out: Path) -> None:
    """The demo rewrites its own files, and nobody else's: not a trained run's, not a user's."""
    check_out_dir(out)
    if (out / MANIFEST).exists():
        raise ConfigError(f"out-dir {str(out)!r} holds a trained run; choose another -o")
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("model") != "micrograd":
        raise ConfigError(f"out-dir {str(out)!r} holds a config.json that is not the demo's; "
                          "choose another -o")


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        dataset=args.dataset, points=args.points, hidden=tuple(args.hidden),
        steps=args.steps, lr=args.lr, seed=args.seed,
    )
    config.validate()  # a bad flag stops us here, before anything is written
    _check_demo_dir(Path(args.out_dir))
    print(f"micrograd: {config.dataset} ({config.points} points), "
          f"MLP(2, {config.layer_sizes}), {config.steps} steps, lr {config.lr:g}, seed {config.seed}")
    val = {}

    def show(record: dict) -> None:
        step = record["step"]
        if "val_loss" in record:
            val[step] = record["val_loss"]
        elif "train_loss" in record and ((step - 1) % PRINT_EVERY == 0 or step == config.steps):
            line = f"step {step:5d}  train loss {record['train_loss']:.4f}"
            if step in val:
                line += f"  val loss {val[step]:.4f}"
            print(line, flush=True)

    result = run_demo(config, args.out_dir, on_record=show)
    print(f"test accuracy {result.trained.test_accuracy:.1%} "
          f"({len(result.trained.data.test)} points)")
    print(f"wrote {', '.join(f.name for f in result.files)} to {result.out_dir}/")
    if args.html:
        page = write_page(result.out_dir, config)
        print(f"wrote {page}: open it in a browser")
    if result.regions_png is None:
        print("no regions.png: install matplotlib for the decision-region picture")
    if result.graph_svg is None:
        print(f"no graph.svg ({result.graph_error}); to draw it, install Graphviz and run:\n"
              f"  dot -Tsvg {result.graph_dot} -o {result.graph_dot.with_suffix('.svg')}")
    return 0
