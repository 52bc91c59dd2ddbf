"""``tinylm diagnose``: the statistics tables and plots of a trained neural run, printed.

The measuring and the plots are tinylm.diagnostics; this module parses the
flags and prints the tables and where the pictures went.
"""

from __future__ import annotations

import argparse

from tinylm import diagnostics, settings
from tinylm.cli.common import add_command, add_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``diagnose`` subcommand."""
    p = add_command(
        sub, "diagnose", run,
        help="print and plot training diagnostics of a trained neural run",
        description="Measure the model saved in -o DIR on a batch of its training data and print, "
        "per layer, activation mean/std/saturation, dead units and gradient statistics, and per "
        "weight matrix the gradient statistics and update:data ratio; write histograms, the "
        "update:data curves (recorded with 'train --diagnose-every N') and the loss curve as PNGs.")
    add_run_dir(p, required=True)
    p.add_argument("--batch-size", type=settings.POSITIVE_INT.parse, default=None, metavar="N",
                   help="examples to measure on (default: 512, or the whole train split if smaller)")
    p.add_argument("--seed", type=settings.SEED.parse, default=42, metavar="S",
                   help="seed of the RNG that draws the batch (default: 42)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="where to write the PNGs (default: DIR/diagnostics)")


def run(args: argparse.Namespace) -> int:
    result = diagnostics.diagnose_run(args.out_dir, args.plots, args.batch_size, args.seed)
    print(f"diagnostics of {args.out_dir} at step {result.step}")
    print(result.table())
    if not result.history:
        print("(update:data over training is recorded by 'tinylm train --diagnose-every N'; "
              "this run has only the final ratios)")
    print(f"wrote {', '.join(str(p) for p in result.plots)}")
    return 0
