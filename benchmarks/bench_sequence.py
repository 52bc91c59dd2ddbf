"""The sequence models' speed: a training step per backend, and sampling with and without the cache.

    PYTHONPATH=src python benchmarks/bench_sequence.py [--rounds 5] [--threads N] [--quick]

1. training: one step (forward, backward, AdamW) of the transformer-makemore
   recipe's model (4 blocks of 4 heads, n_embd 64, vocab 27, batch 32,
   block 16) and of gru-makemore's, on numpy, torch and torch-module. The
   issue's target: numpy at most 2x torch.
2. sampling: 200 tokens after a one-character prompt, each token one coin
   (tinylm.sample.sample_tokens), with the cache (keys and values kept per
   attention layer, the hidden state carried) and without it (a forward pass
   over the whole prefix per token). The model is the recipe's, with a block
   of 256 so that the 200 tokens fit; the target: the cache at least 5x
   faster. (A name is a prefix of about 7 tokens, where a forward pass over
   the prefix costs little more than one over a single token: the cache
   matters for long streams and large blocks.)

Measurements are interleaved: every round times each one once, in a new
order, and a ratio is taken within a round, so a machine busy with other
jobs slows both sides of it alike. Printed: the median over the rounds and
the spread of the middle half. Nothing is asserted: benchmarks print, tests
assert.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinylm import threads  # noqa: E402
from tinylm.data import Tokenizer  # noqa: E402
from tinylm.models import ModelConfig, build_model  # noqa: E402
from tinylm.optim import make_optimizer  # noqa: E402
from tinylm.rng import RNG  # noqa: E402
from tinylm.sample import sample_items, sample_tokens  # noqa: E402

try:
    import torch
except ImportError:  # the torch lines are left out
    torch = None

VOCAB = tuple("\nabcdefghijklmnopqrstuvwxyz")
BACKENDS = ("numpy", "torch", "torch-module") if torch is not None else ("numpy",)


def config(name: str, block_size: int) -> ModelConfig:
    if name == "transformer":
        return ModelConfig("transformer", vocab_size=len(VOCAB), block_size=block_size,
                           n_embd=64, n_heads=4, n_layers=4)
    return ModelConfig(name, vocab_size=len(VOCAB), block_size=block_size, n_embd=64, n_embd2=64)


def trained_like(name: str, backend: str, block_size: int):
    """The model with weights moved off their initial values, so that it samples varied text."""
    cfg = config(name, block_size)
    state = build_model(cfg, "numpy", RNG(7)).state_dict()
    rs = np.random.RandomState(0)
    state = {k: (v + 0.2 * rs.randn(*v.shape)).astype(np.float32) for k, v in state.items()}
    model = build_model(cfg, backend, RNG(7))
    model.load_state_dict(state)
    return model


def training_step(name: str, backend: str):
    model = build_model(config(name, 16), backend, RNG(3))
    optimizer = make_optimizer(model, "adamw", lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99))
    rs = np.random.RandomState(1)
    X = rs.randint(0, len(VOCAB), size=(32, 16))
    Y = rs.randint(0, len(VOCAB), size=(32, 16))

    def step() -> None:
        model.train()
        model.forward(X, Y)
        model.backward()
        optimizer.step()
    return step


def timed(fn, repeat: int) -> float:
    """Seconds per call, the fastest of ``repeat`` calls after one to warm up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_rounds(measurements: dict, rounds: int, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {key: [] for key in measurements}
    keys = list(measurements)
    for _ in range(rounds):
        random.shuffle(keys)
        for key in keys:
            times[key].append(timed(measurements[key], repeat))
    return times


def spread(values: list[float]) -> str:
    if len(values) < 4:
        return ""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"(q1-q3 {q1:.2f}-{q3:.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for BLAS and torch (default 0: tinylm's default)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else 5
    with threads.limited(args.threads):
        print(f"python {platform.python_version()} | numpy {np.__version__} | "
              f"torch {torch.__version__ if torch else 'not installed'} | "
              f"{os.cpu_count()} cpus | threads {threads.effective(args.threads)} | "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        print("\n1. training step (batch 32, block 16), fastest of "
              f"{repeat} per round, median over {args.rounds} rounds")
        for name in ("transformer", "gru"):
            steps = {backend: training_step(name, backend) for backend in BACKENDS}
            times = run_rounds(steps, args.rounds, repeat)
            for backend in BACKENDS:
                line = f"  {name:11s} {backend:12s} {1e3 * statistics.median(times[backend]):7.2f} ms"
                if backend != "numpy":
                    ratios = [n / t for n, t in zip(times["numpy"], times[backend])]
                    line += f"   numpy is {statistics.median(ratios):.2f}x this {spread(ratios)}"
                print(line + ("   target: numpy <= 2x torch"
                              if name == "transformer" and backend == "torch" else ""))

        tok = Tokenizer(VOCAB)
        print("\n2. sampling 200 tokens after 'a' (block 256), tokens per second")
        for name in ("transformer", "gru"):
            for backend in BACKENDS:
                model = trained_like(name, backend, 256)
                runs = {cache: (lambda c=cache: sample_tokens(model, tok, "a", 200, RNG(5), cache=c))
                        for cache in (True, False)}
                same = runs[True]() == runs[False]()
                times = run_rounds(runs, args.rounds, max(1, repeat // 5))
                ratios = [u / c for c, u in zip(times[True], times[False])]
                print(f"  {name:11s} {backend:12s} cache {200 / statistics.median(times[True]):7.0f}"
                      f"   none {200 / statistics.median(times[False]):6.0f}"
                      f"   cache {statistics.median(ratios):5.1f}x faster {spread(ratios)}"
                      f"   same tokens: {same}" + ("   target >= 5x" if name == "transformer" else ""))

        print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
