"""The sequence models' speed: training against its floor and a plain PyTorch loop; sampling.

    python benchmarks/bench_sequence.py [--rounds 5] [--threads N] [--threads-compare] [--compile]
                                        [--quick]

What it measures:

1. Transformer training steps (forward, backward, AdamW; the batch drawn as
   random windows of a memory-mapped token array, the same way for every
   contender) for two models:

   A. the transformer-makemore recipe's model: 4 blocks of 4 heads, n_embd 64,
      vocab 27, batch 32, block 16;
   B. the text model of docs/text.md (``bench_text.py side-by-side``): 4 blocks
      of 4 heads, n_embd 128, batch 12, block 64, vocab 96 (the characters of
      that benchmark's 2.3 MB of Python sources).

   Each is timed on tinylm's numpy, torch and torch-module backends and as the
   plain PyTorch loop of ``plain_loop.py`` (``F.scaled_dot_product_attention``,
   ``torch.optim.AdamW``), in the same process. Printed: milliseconds and
   tokens (batch x block) per second; each tinylm step as a multiple of the
   floor of its library (numpy's step over the numpy floor, the torch
   backends' over the torch floor); tokens/s of each backend over the plain
   loop's. With ``--compile``, torch-module with ``--compile`` (torch.compile)
   is one more contender.

   The floor is the step's matrix multiplies alone, as plain float32 matmuls
   of the same shapes on preallocated, contiguous arrays (``np.matmul`` and
   ``torch.matmul`` with ``out=``), on the same thread count. With N = batch x
   block rows, a Linear of fan-in k and fan-out n is three matmuls of 2 N k n
   FLOP each: the forward x W^T, and in the backward dx = dy W and dW = dy^T x.
   A block's Linears (qkv C->3C, proj C->C, mlp C->4C and 4C->C) hold 12 C^2
   weights, so 6 N 12 C^2 = 72 N C^2 FLOP. Attention is six batched matmuls
   of 2 B T^2 C FLOP each (over the heads, T x hs by hs x T or T x T by T x hs,
   hs = C / heads, the full T x T without the causal saving): q k^T and att v,
   and in the backward datt = dy v^T, dv = att^T dy, dq = ds k, dk = ds^T q.
   The head (C->V, no bias) adds 6 N C V. A step's floor is therefore
   L (72 N C^2 + 12 B T^2 C) + 6 N C V FLOP: 634,454,016 for A
   (75 matmuls), 3,982,491,648 for B (75 matmuls). The embeddings' lookups
   and scatter-adds, the softmax, LayerNorm, GELU, the loss and AdamW are
   not in it: they are what a step costs above its floor.

2. The GRU of gru-makemore (n_embd 64, hidden 64, vocab 27, batch 32, block
   16): a training step per backend, and numpy's tokens/s over torch's.

3. Sampling: 200 tokens after a one-character prompt, each token one coin
   (tinylm.sample.sample_tokens), with the cache (keys and values kept per
   attention layer, the hidden state carried) and without it (a forward pass
   over the whole prefix per token). The model is the recipe's, with a block
   of 256 so that the 200 tokens fit. Beside tinylm's Transformers, the plain
   PyTorch model of ``plain_loop.py`` samples as everyday PyTorch code does
   (``generate``: a key-value cache, ``torch.multinomial``) with and without
   its cache: the yardstick for what a cached token costs at this size.

The issue's targets are printed next to the figures, with whether the median
meets them: torch-module tokens/s at least 1.3x the plain loop's (the goal
1.5x); each torch backend's step at most 1.6x the torch floor; numpy at
least 0.7x torch-module's tokens/s on the Transformer and at least 1x
torch's on the GRU; sampling with the cache at least 5x faster than without.

Method: measurements are interleaved. Every round times each contender of a
section once, in a new random order (the fastest of a few calls after one to
warm up), and a ratio is taken within a round, so a machine busy with other
jobs slows both sides of it alike. Printed: the median over the rounds and
the spread (the middle half, q1-q3, from 4 rounds up; else the range). One
thread by default (``--threads N`` to change; ``--threads-compare`` runs
everything at 1 and then at 2 threads). ``--quick`` is a smoke run (3
rounds, the fastest of 2 calls a round, 50 sampled tokens; well under a
minute). The
conditions (CPU, cores, threads, versions, load average at the start and at
the end) are printed with the figures. Nothing is asserted: benchmarks
print, tests assert.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from tinylm import threads  # noqa: E402
from tinylm.data import Tokenizer  # noqa: E402
from tinylm.models import ModelConfig, build_model  # noqa: E402
from tinylm.optim import make_optimizer  # noqa: E402
from tinylm.rng import RNG  # noqa: E402
from tinylm.sample import sample_tokens  # noqa: E402

import windows  # noqa: E402

try:
    import torch

    import plain_loop
except ImportError:  # the torch lines are left out
    torch = None

VOCAB = tuple("\nabcdefghijklmnopqrstuvwxyz")
BACKENDS = ("numpy", "torch", "torch-module") if torch is not None else ("numpy",)
TOKENS_IN_FILE = 1_000_000
COMPILED = "torch-module --compile"


@dataclass(frozen=True)
class Shape:
    """A Transformer's sizes and its training batch."""
    label: str
    vocab: int
    block: int
    n_embd: int
    n_heads: int
    n_layers: int
    batch: int
    lr: float

    @property
    def tokens(self) -> int:
        return self.batch * self.block

    def describe(self) -> str:
        return (f"{self.n_layers} blocks of {self.n_heads} heads, n_embd {self.n_embd}, "
                f"vocab {self.vocab}, batch {self.batch} x block {self.block} = "
                f"{self.tokens} tokens a step")


MODELS = (
    Shape("A. transformer-makemore", vocab=27, block=16, n_embd=64, n_heads=4, n_layers=4,
          batch=32, lr=5e-4),
    Shape("B. the text model of docs/text.md", vocab=96, block=64, n_embd=128, n_heads=4,
          n_layers=4, batch=12, lr=1e-3),
)


# --- the floor --------------------------------------------------------------------------------


def floor_matmuls(s: Shape) -> list[tuple[tuple[int, ...], int, int, int]]:
    """The matmuls of one training step, as (batch dims, M, K, N): (M x K) @ (K x N)."""
    N, C, T, B = s.tokens, s.n_embd, s.block, s.batch
    hs = C // s.n_heads
    out: list[tuple[tuple[int, ...], int, int, int]] = []

    def linear(fan_in: int, fan_out: int) -> None:
        out.append(((), N, fan_in, fan_out))    # y = x W^T
        out.append(((), N, fan_out, fan_in))    # dx = dy W
        out.append(((), fan_out, N, fan_in))    # dW = dy^T x

    heads = (B, s.n_heads)
    for _ in range(s.n_layers):
        linear(C, 3 * C)                        # qkv
        out.append((heads, T, hs, T))           # scores = q k^T
        out.append((heads, T, T, hs))           # y = att v
        out.append((heads, T, hs, T))           # datt = dy v^T
        out.append((heads, T, T, hs))           # dv = att^T dy
        out.append((heads, T, T, hs))           # dq = ds k
        out.append((heads, T, T, hs))           # dk = ds^T q
        linear(C, C)                            # proj
        linear(C, 4 * C)                        # mlp.0
        linear(4 * C, C)                        # mlp.2
    linear(C, s.vocab)                          # lm_head
    return out


def floor_flops(s: Shape) -> int:
    return sum(2 * math.prod(batch) * M * K * N for batch, M, K, N in floor_matmuls(s))


def floor_numpy(s: Shape):
    rs = np.random.RandomState(0)
    ops = [(rs.standard_normal(b + (M, K)).astype(np.float32),
            rs.standard_normal(b + (K, N)).astype(np.float32),
            np.empty(b + (M, N), np.float32)) for b, M, K, N in floor_matmuls(s)]

    def run() -> None:
        for a, b, o in ops:
            np.matmul(a, b, out=o)
    return run


def floor_torch(s: Shape):
    g = torch.Generator().manual_seed(0)
    ops = [(torch.randn(b + (M, K), generator=g), torch.randn(b + (K, N), generator=g),
            torch.empty(b + (M, N))) for b, M, K, N in floor_matmuls(s)]

    def run() -> None:
        with torch.no_grad():
            for a, b, o in ops:
                torch.matmul(a, b, out=o)
    return run


# --- the steps --------------------------------------------------------------------------------


def token_file(directory: Path, vocab: int):
    """A memory-mapped array of random tokens below ``vocab``, the windows' source."""
    path = directory / f"tokens-{vocab}.npy"
    if not path.exists():
        tokens = np.random.RandomState(vocab).randint(0, vocab, TOKENS_IN_FILE)
        np.save(path, tokens.astype(np.uint16))
    return np.load(path, mmap_mode="r")


def tinylm_step(cfg: ModelConfig, backend: str, data, batch: int, lr: float,
                compiled: bool = False):
    model = build_model(cfg, backend, RNG(3))
    if compiled:
        model.compile()  # the first call, a warm-up, waits for the compiler
    optimizer = make_optimizer(model, "adamw", lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    g = np.random.default_rng(1)

    def step() -> None:
        X, Y = windows.batch(data, g, len(data), cfg.block_size, batch)
        model.train()
        model.forward(X, Y)
        model.backward()
        optimizer.step()
    return step


def plain_step(s: Shape, data):
    model, opt = plain_loop.make(s.vocab, s.block, s.n_embd, s.n_heads, s.n_layers, s.lr)
    g = np.random.default_rng(1)

    def step() -> None:
        x, y = windows.batch(data, g, len(data), s.block, s.batch)
        plain_loop.train_step(model, opt, torch.from_numpy(x), torch.from_numpy(y))
    return step


def transformer_config(s: Shape) -> ModelConfig:
    return ModelConfig("transformer", vocab_size=s.vocab, block_size=s.block, n_embd=s.n_embd,
                       n_heads=s.n_heads, n_layers=s.n_layers)


def sampling_config(name: str, block_size: int) -> ModelConfig:
    if name == "transformer":
        return ModelConfig("transformer", vocab_size=len(VOCAB), block_size=block_size,
                           n_embd=64, n_heads=4, n_layers=4)
    return ModelConfig(name, vocab_size=len(VOCAB), block_size=block_size, n_embd=64, n_embd2=64)


def trained_like(name: str, backend: str, block_size: int):
    """The model with weights moved off their initial values, so that it samples varied text."""
    cfg = sampling_config(name, block_size)
    state = build_model(cfg, "numpy", RNG(7)).state_dict()
    rs = np.random.RandomState(0)
    state = {k: (v + 0.2 * rs.randn(*v.shape)).astype(np.float32) for k, v in state.items()}
    model = build_model(cfg, backend, RNG(7))
    model.load_state_dict(state)
    return model


# --- timing and printing ----------------------------------------------------------------------


def timed(fn, repeat: int, warm: bool = True) -> float:
    """Seconds per call, the fastest of ``repeat`` calls (after one to warm up)."""
    if warm:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_rounds(measurements: dict, rounds: int, repeat: int, warm: bool = True) -> dict:
    """Per contender, its time in every round; each round times each once, in a new order."""
    times: dict = {key: [] for key in measurements}
    keys = list(measurements)
    for _ in range(rounds):
        random.shuffle(keys)
        for key in keys:
            times[key].append(timed(measurements[key], repeat, warm))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 2) -> str:
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
        return f"(q1-q3 {q1:.{digits}f}-{q3:.{digits}f})"
    if len(values) >= 2:
        return f"(range {min(values):.{digits}f}-{max(values):.{digits}f})"
    return ""


def ratio(values: list[float]) -> str:
    return f"{median(values):5.2f}x {spread(values):22s}"


def target(value: float, at_least: float | None = None, at_most: float | None = None,
           goal: float | None = None) -> str:
    if at_least is not None:
        met = value >= at_least
        text = f"target >= {at_least:g}x" + (f" (goal {goal:g}x)" if goal else "")
    else:
        met = value <= at_most
        text = f"target <= {at_most:g}x"
    return f"{text}: {'met' if met else 'NOT met'}"


def per_round(a: list[float], b: list[float]) -> list[float]:
    """a[r] / b[r] for every round r."""
    return [x / y for x, y in zip(a, b)]


def tokens_per_second(tokens: int, seconds: list[float]) -> str:
    return f"{tokens / median(seconds):9,.0f}"


# --- the sections -----------------------------------------------------------------------------


def transformer_section(s: Shape, data, rounds: int, repeat: int, compiled: bool) -> None:
    flops = floor_flops(s)
    n_matmuls = len(floor_matmuls(s))
    contenders = {"numpy floor": floor_numpy(s)}
    for backend in BACKENDS:
        contenders[backend] = tinylm_step(transformer_config(s), backend, data, s.batch, s.lr)
    steps = list(BACKENDS)
    if compiled and torch is not None:
        contenders[COMPILED] = tinylm_step(transformer_config(s), "torch-module", data, s.batch,
                                           s.lr, compiled=True)
        steps.append(COMPILED)
    if torch is not None:
        contenders["torch floor"] = floor_torch(s)
        contenders["plain PyTorch"] = plain_step(s, data)
    times = run_rounds(contenders, rounds, repeat)

    print(f"\n{s.label}: {s.describe()}")
    print(f"  floor: {n_matmuls} float32 matmuls, {flops:,} FLOP a step ({flops / 1e9:.3f} GFLOP)")
    for lib in ("numpy floor", "torch floor"):
        if lib in times:
            t = median(times[lib])
            print(f"    {lib:13s} {1e3 * t:8.2f} ms   {flops / t / 1e9:6.1f} GFLOP/s "
                  f"{spread([flops / x / 1e9 for x in times[lib]], 1)}")
    print(f"  {'step':15s} {'ms':>8s}   {'tokens/s':>9s}")
    for key in (*steps, "plain PyTorch"):
        if key in times:
            print(f"    {key:22s} {1e3 * median(times[key]):8.2f}   "
                  f"{tokens_per_second(s.tokens, times[key])}")
    print("  each step over its library's floor:")
    for backend in steps:
        lib = "numpy floor" if backend == "numpy" else "torch floor"
        r = per_round(times[backend], times[lib])
        note = target(median(r), at_most=1.6) if backend != "numpy" else ""
        print(f"    {backend:22s} {ratio(r)} {note}".rstrip())
    if torch is None:
        return
    print("  tokens/s against the plain PyTorch loop's:")
    for backend in ("torch-module", "torch", "numpy") + ((COMPILED,) if COMPILED in times else ()):
        r = per_round(times["plain PyTorch"], times[backend])
        note = target(median(r), at_least=1.3, goal=1.5) if "torch-module" in backend else ""
        print(f"    {backend + ' / plain':30s} {ratio(r)} {note}".rstrip())
    r = per_round(times["torch-module"], times["numpy"])
    print(f"    {'numpy / torch-module':30s} {ratio(r)} {target(median(r), at_least=0.7)}")


def gru_section(data, rounds: int, repeat: int) -> None:
    cfg = ModelConfig("gru", vocab_size=len(VOCAB), block_size=16, n_embd=64, n_embd2=64)
    steps = {backend: tinylm_step(cfg, backend, data, 32, 5e-4) for backend in BACKENDS}
    times = run_rounds(steps, rounds, repeat)
    print("\nthe GRU of gru-makemore: n_embd 64, hidden 64, vocab 27, batch 32 x block 16 = 512 "
          "tokens a step")
    print(f"  {'step':15s} {'ms':>8s}   {'tokens/s':>9s}")
    for backend in BACKENDS:
        print(f"    {backend:13s} {1e3 * median(times[backend]):8.2f}   "
              f"{tokens_per_second(512, times[backend])}")
    for backend in BACKENDS[1:]:
        r = per_round(times[backend], times["numpy"])
        note = target(median(r), at_least=1.0) if backend == "torch" else ""
        print(f"    {'numpy / ' + backend + ' tokens/s':30s} {ratio(r)} {note}".rstrip())


def sampling_section(rounds: int, n_tokens: int) -> None:
    tok = Tokenizer(VOCAB)
    print(f"\nsampling {n_tokens} tokens after 'a' (block 256), tokens per second, one call a round"
          + ("" if n_tokens == 200 else " (the 5x target is for 200 tokens: fewer gain less)"))
    cached: dict[str, list[float]] = {}  # the Transformer's seconds with its cache, by backend
    for name in ("transformer", "gru"):
        for backend in BACKENDS:
            model = trained_like(name, backend, 256)
            runs = {c: (lambda c=c: sample_tokens(model, tok, "a", n_tokens, RNG(5), cache=c))
                    for c in (True, False)}
            seconds = cache_against_none(name, backend, runs, rounds, n_tokens, with_target=True)
            if name == "transformer":
                cached[backend] = seconds
        if name == "transformer" and torch is not None:
            plain_sampling(rounds, n_tokens, cached)


def cache_against_none(name: str, backend: str, runs: dict, rounds: int, n_tokens: int,
                       with_target: bool = False) -> list[float]:
    """Time sampling with the cache (``runs[True]``) and without (``runs[False]``) in
    interleaved rounds and print their line; returns the seconds with the cache."""
    same = runs[True]() == runs[False]()          # also the warm-up
    times = run_rounds(runs, rounds, 1, warm=False)
    r = per_round(times[False], times[True])
    note = f"   {target(median(r), at_least=5)}" if with_target else ""
    print(f"  {name:11s} {backend:12s} cache {n_tokens / median(times[True]):7.0f}"
          f"   none {n_tokens / median(times[False]):6.0f}"
          f"   cache {median(r):5.1f}x faster {spread(r, 1):18s}"
          f"   same tokens: {str(same):5s}{note}".rstrip())
    return times[True]


def plain_sampling(rounds: int, n_tokens: int, cached: dict) -> None:
    """The plain PyTorch model's sampling (``plain_loop.generate``) with and without its
    cache, and each tinylm backend's cached tokens/s over its cached ones."""
    s = sampling_config("transformer", 256)
    torch.manual_seed(7)
    model = plain_loop.GPT(s.vocab_size, s.block_size, s.n_embd, s.n_heads, s.n_layers)
    runs = {c: (lambda c=c: plain_loop.generate(model, [0, 1], n_tokens, cached=c))
            for c in (True, False)}
    plain = cache_against_none("transformer", "plain torch", runs, rounds, n_tokens)
    for backend, t in cached.items():  # timed in other rounds: a ratio of medians
        print(f"    {backend + ' cached / plain cached, tokens/s':45s} "
              f"{median(plain) / median(t):5.2f}x")


def conditions(requested: list[int]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"cpu {cpu} | {os.cpu_count()} cores ({usable} usable) | threads "
            f"{', '.join(map(str, requested))} | python {platform.python_version()} | "
            f"numpy {np.__version__} ({blas()}) | "
            f"torch {torch.__version__ if torch else 'not installed'} | "
            f"load average {load()}")


def blas() -> str:
    pools = [f"{pool.get('internal_api')} {pool.get('version')}" for pool in threadpool_info()
             if pool.get("user_api") == "blas"]
    return ", ".join(pools) or "BLAS unknown"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleaved rounds (default 5; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for BLAS and torch (default 1)")
    parser.add_argument("--threads-compare", action="store_true",
                        help="run everything at 1 thread and then at 2")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch-module with --compile (torch.compile; the "
                        "first call of each model waits for the compiler)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 rounds, 2 calls a round, 50 sampled tokens")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    repeat = 2 if args.quick else 5
    n_tokens = 50 if args.quick else 200
    counts = [1, 2] if args.threads_compare else [args.threads]
    for n in counts:
        threads.check(n)

    t_start = time.perf_counter()
    print(conditions(counts))
    print(f"{rounds} interleaved rounds; a training step is the fastest of {repeat} calls a round; "
          "medians over the rounds, ratios taken within each round")
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            with threads.limited(n):
                print(f"\n=== {n} thread{'s' if n > 1 else ''} "
                      f"(torch {torch.get_num_threads() if torch else '-'}), load average {load()}")
                for s in MODELS:
                    transformer_section(s, token_file(Path(tmp), s.vocab), rounds, repeat,
                                        args.compile)
                gru_section(token_file(Path(tmp), len(VOCAB)), rounds, repeat)
                sampling_section(rounds, n_tokens)
    print(f"\nload average at the end: {load()} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
