"""Data-parallel training on this machine: steps and tokens per second for 1 and 2 processes.

    python benchmarks/bench_ddp.py [--steps 300] [--procs 1 2] [--backend torch]

For each model (the mlp-classic recipe's MLP, batch 128, and the
transformer-makemore recipe's Transformer, batch 32, both at their recipe
sizes) and each number of processes, the script starts ``torchrun
--standalone --nproc_per_node N`` on itself. Every process times the same
training steps of tinylm's trainer (forward and backward of its part of the
batch, the all-reduce of the gradients, the AdamW update) and, inside
them, the all-reduce alone. Printed by process 0: steps per second, scored
tokens per second (a token per example for the MLP; for the Transformer
the targets of its rows that are not padding), the all-reduce's share of a
step, and the bytes each all-reduce carries (parameters x 4).

The global batch is the same for every N, so the step computes the same
numbers (tests/test_distributed.py) and only its time changes. Nothing is
asserted: benchmarks print, tests assert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinylm import data, distributed, settings, threads  # noqa: E402
from tinylm.batches import Batches, split_for  # noqa: E402
from tinylm.data import IGNORE  # noqa: E402
from tinylm.models import ModelConfig, build_model  # noqa: E402
from tinylm.recipes import RECIPES  # noqa: E402
from tinylm.rng import RNG  # noqa: E402
from tinylm.train import TrainConfig, Trainer  # noqa: E402

MODELS = {"mlp": "mlp-classic", "transformer": "transformer-makemore"}


def worker(model: str, backend: str, steps: int) -> None:
    """One process of a torchrun job: time ``steps`` training steps; process 0 prints JSON."""
    world = distributed.from_environment()
    if world.distributed:
        distributed.start(world)
    recipe = dict(RECIPES[MODELS[model]].settings)
    lines = data.read_lines(data.default_dataset())
    tokenizer = data.Tokenizer.from_lines(lines)
    lines3 = data.split_lines(lines)
    if model == "transformer":
        recipe["block_size"] = max(len(line) for line in lines) + 1
    recipe.update(backend=backend, loader="words", steps=steps + 20)
    mconfig = settings.resolve(ModelConfig, [recipe], vocab_size=tokenizer.vocab_size)
    config = settings.resolve(TrainConfig, [recipe])
    rng = RNG(config.seed)
    net = build_model(mconfig, backend, rng)
    splits = {name: split_for(name, data.Items(ls, tokenizer), mconfig, config.loader)
              for name, ls in zip(data.SPLIT_NAMES, lines3)}
    trainer = Trainer(config, net, splits, rng, world=world)
    batches = Batches(splits["train"], config.batch_size, rng)

    reduce_seconds = [0.0]
    reduce = distributed.all_reduce_grads

    def timed_reduce(params, extras=()):
        t0 = time.perf_counter()
        out = reduce(params, extras)
        reduce_seconds[0] += time.perf_counter() - t0
        return out

    distributed.all_reduce_grads = timed_reduce
    scored = 0
    with threads.limited(1):
        for step in range(20):  # warm up
            trainer._step(*batches.next(), step)
        reduce_seconds[0] = 0.0
        t0 = time.perf_counter()
        for step in range(steps):
            X, Y = batches.next()
            trainer._step(X, Y, step)
            scored += int((Y != IGNORE).sum())
        seconds = time.perf_counter() - t0
    if world.main:
        print(json.dumps({"model": model, "procs": world.size, "params": net.num_params(),
                          "batch": config.batch_size, "steps_per_s": steps / seconds,
                          "tokens_per_s": scored / seconds,
                          "reduce_ms": 1e3 * reduce_seconds[0] / steps,
                          "step_ms": 1e3 * seconds / steps}))
    distributed.stop()


def launch(model: str, backend: str, steps: int, procs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", str(procs), __file__, "--worker", model,
                          "--backend", backend, "--steps", str(steps)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (default 300)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2],
                        help="numbers of processes to compare (default: 1 2)")
    parser.add_argument("--backend", default="torch", choices=("torch", "torch-module"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.backend, args.steps)
        return 0
    import torch

    print(f"python {platform.python_version()} | torch {torch.__version__} | {os.cpu_count()} cpus"
          f" | gloo on CPU, one thread per process | backend {args.backend} | load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for model in args.models:
        results = [launch(model, args.backend, args.steps, n) for n in args.procs]
        first = results[0]
        print(f"\n{model} ({MODELS[model]}): {first['params']:,} parameters, global batch "
              f"{first['batch']}; an all-reduce carries {4 * first['params'] / 1e6:.2f} MB")
        for r in results:
            share = r["reduce_ms"] / r["step_ms"] if r["procs"] > 1 else 0.0
            print(f"  {r['procs']} process{'es' if r['procs'] > 1 else '  '}  "
                  f"{r['steps_per_s']:7.1f} steps/s  {r['tokens_per_s']:9,.0f} tokens/s  "
                  f"step {r['step_ms']:6.2f} ms  all-reduce {r['reduce_ms']:5.2f} ms "
                  f"({100 * share:3.0f}% of the step)  "
                  f"speed-up {r['steps_per_s'] / first['steps_per_s']:.2f}x")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
