"""Time the scalar-autograd demo's training: the reference recipe and a larger one.

Usage: python benchmarks/bench_micrograd.py [--runs N] [--large-runs N] [--with-gc]

Prints the median wall time over several runs of ``tinylm.micrograd.demo.train``
(data, model, every step, the val evaluations and the test accuracy; no files,
no pictures). The reference recipe's target is under 2.5 s on a 2-core machine.
``--with-gc`` keeps CPython's cycle collector running during training, to show
what pausing it is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

from tinylm.micrograd import demo
from tinylm.micrograd.demo import DemoConfig

RECIPES = {
    "reference: yinyang 100 points, MLP(2, [8, 3]), 100 steps": DemoConfig(),
    "larger: yinyang 300 points, MLP(2, [16, 16, 3]), 100 steps": DemoConfig(points=300, hidden=(16, 16)),
}


def time_runs(config: DemoConfig, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        demo.train(config)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of the reference recipe")
    parser.add_argument("--large-runs", type=int, default=3, help="runs of the larger recipe")
    parser.add_argument("--with-gc", action="store_true",
                        help="do not pause the cycle collector during training")
    args = parser.parse_args()

    gc_context = (mock.patch.object(demo, "cycle_collector_paused", contextlib.nullcontext)
                  if args.with_gc else contextlib.nullcontext())
    with gc_context:
        for (name, config), runs in zip(RECIPES.items(), (args.runs, args.large_runs)):
            times = time_runs(config, runs)
            print(f"{name}: median {statistics.median(times):.3f} s over {runs} runs "
                  f"(min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
