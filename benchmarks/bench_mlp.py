"""Where the time of an MLP training run goes, per backend (prints; asserts nothing).

    python benchmarks/bench_mlp.py [--steps-timed 200] [--run-steps 1000] [--skip-runs]

1. the machine: float32 matmul GFLOP/s (a large square product, and the
   shapes of one classic training step);
2. the median milliseconds of one training step (batch, forward, backward,
   AdamW) on the classic config (context 3, embedding 48, hidden 512, batch
   128) for numpy, torch and torch-module; micrograd on a tiny config, since
   a scalar engine would need minutes for one classic step;
3. the wall time of a 1000-step ``mlp-classic`` run through the CLI (with its
   evaluations every 200 steps, test loss and sample.txt) for numpy and torch,
   against a naive loop doing the same work: batches built from Python lists
   one window at a time, the embedding gradient accumulated one example at a
   time; once in PyTorch (autograd for the rest) and once in plain numpy.

Targets on the 2-core reference machine: numpy step <= 1.2x the torch step,
torch run >= 2x faster than the naive loop.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinylm import data
from tinylm.batches import Batches, make_split
from tinylm.models import ModelConfig, build_model
from tinylm.optim import make_optimizer
from tinylm.rng import RNG
from tinylm.runs import resolve_configs
from tinylm.train import TrainConfig, Trainer

NET, CLASSIC = resolve_configs(None, "mlp-classic", {}, vocab_size=27)


def matmul_gflops(n: int = 1024, repeat: int = 20) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(repeat):
        a @ a
    return repeat * 2 * n**3 / (time.perf_counter() - t) / 1e9


def step_flops(c: TrainConfig, vocab: int) -> float:
    """Multiply-adds x2 of the three matmuls per Linear (forward, d input, d weight)."""
    B, TE, H, V = c.batch_size, NET.context * NET.n_embd, NET.n_hidden, vocab
    return 3 * 2 * B * (TE * H + H * V)


def step_shapes_gflops(c: TrainConfig, vocab: int, repeat: int = 300) -> float:
    """The same six matmuls a step does, alone: the ceiling for the step."""
    rng = np.random.default_rng(0)
    B, TE, H, V = c.batch_size, NET.context * NET.n_embd, NET.n_hidden, vocab
    x, w1 = rng.random((B, TE), dtype=np.float32), rng.random((H, TE), dtype=np.float32)
    h, w2 = rng.random((B, H), dtype=np.float32), rng.random((V, H), dtype=np.float32)
    dl, dh = rng.random((B, V), dtype=np.float32), rng.random((B, H), dtype=np.float32)

    def once():
        x @ w1.T, h @ w2.T, dl @ w2, dl.T @ h, dh @ w1, dh.T @ x

    once()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return step_flops(c, vocab) / statistics.median(times) / 1e9


def median_step_ms(config: TrainConfig, splits, n: int, net: ModelConfig = NET) -> float:
    rng = RNG(config.seed)
    model = build_model(net, config.backend, rng)
    trainer = Trainer(config, model, splits["data"], rng)
    batches = Batches(splits["data"]["train"], config.batch_size, rng)
    for _ in range(10):  # warm up caches, allocator and (for torch) the autograd graph code
        trainer._update(batches)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        trainer._update(batches)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def numpy_breakdown_ms(config: TrainConfig, splits, n: int) -> dict[str, float]:
    """Median ms of each part of a numpy step."""
    rng = RNG(config.seed)
    model = build_model(NET, "numpy", rng)
    optimizer = make_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    batches = Batches(splits["data"]["train"], config.batch_size, rng)
    parts = {"batch": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(n + 10):
        t0 = time.perf_counter()
        X, Y = batches.next()
        t1 = time.perf_counter()
        model.forward(X, Y)
        t2 = time.perf_counter()
        model.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= 10:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(dt)
    return {name: 1000 * statistics.median(ts) for name, ts in parts.items()}


def load_splits(config: TrainConfig):
    lines = data.read_lines(data.default_dataset())
    tok = data.Tokenizer.from_lines(lines)
    lines3 = data.split_lines(lines, seed=42)
    return {"tokenizer": tok, "lines": lines3,
            "data": {name: make_split(name, ls, tok, NET.context, config.loader)
                     for name, ls in zip(data.SPLIT_NAMES, lines3)}}


def cli_run_seconds(backend: str, steps: int) -> float:
    from tinylm.cli import main
    import contextlib
    import io

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", "--recipe", "mlp-classic", "--model", "mlp", "--backend", backend,
                         "--steps", str(steps), "-n", "0", "-o", str(Path(tmp) / "run")])
        seconds = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"tinylm train failed with {code}")
    return seconds


# --- the naive baseline ------------------------------------------------------------------------

def naive_setup(lines3, tok):
    """Token lists per split and the classic initial weights, drawn one Python float at a time."""
    c = CLASSIC
    T, E, H, V = c.context, c.n_embd, c.n_hidden, tok.vocab_size
    tokens = {name: tok.encode("".join(line + "\n" for line in ls))
              for name, ls in zip(data.SPLIT_NAMES, lines3)}
    rng = RNG(c.seed)
    shapes = [((V, E), None), ((H, T * E), T * E), ((H,), T * E), ((V, H), H), ((V,), H)]
    params = []
    for shape, fan_in in shapes:
        n = math.prod(shape)
        values = rng.randn(n) if fan_in is None else rng.rand(n, -fan_in**-0.5, fan_in**-0.5)
        params.append(np.array(values, dtype=np.float32).reshape(shape))
    return tokens, params


def naive_batches(toks: list[int], to_array):
    """Consecutive windows, each batch gathered in Python lists."""
    T, B = CLASSIC.context, CLASSIC.batch_size
    pos, xs, ys = 0, [], []
    while True:
        xs.append(toks[pos:pos + T])
        ys.append(toks[pos + T])
        if len(xs) == B:
            yield to_array(xs), to_array(ys)
            xs, ys = [], []
        pos += 1
        if pos + T >= len(toks):
            pos = 0


def naive_run_seconds(lines3, tok, steps: int) -> tuple[float, float]:
    """The classic run written the plain way; returns (seconds, final val loss)."""
    c = CLASSIC
    T, E, B = c.context, c.n_embd, c.batch_size
    t0 = time.perf_counter()
    tokens, params = naive_setup(lines3, tok)
    C, W1, b1, W2, b2 = params
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]

    def batches(toks):
        return naive_batches(toks, np.array)

    def forward(X, Y):
        emb = C[X].reshape(len(X), -1)
        h = np.tanh(emb @ W1.T + b1)
        logits = h @ W2.T + b2
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        return emb, h, p, float(-np.log(p[np.arange(len(Y)), Y]).mean())

    def split_loss(name, limit=None):
        n = len(tokens[name]) // B if limit is None else min(limit, len(tokens[name]) // B)
        it = batches(tokens[name])
        return sum(forward(*next(it))[3] for _ in range(n)) / n

    train = batches(tokens["train"])
    val = float("nan")
    for step in range(steps):
        lr = c.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step % c.eval_every == 0 or step == steps - 1:
            split_loss("train", c.eval_train_batches)
            val = split_loss("val")
        X, Y = next(train)
        emb, h, p, _ = forward(X, Y)
        dlogits = p
        dlogits[np.arange(B), Y] -= 1
        dlogits /= B
        dW2, db2 = dlogits.T @ h, dlogits.sum(0)
        dpre = (dlogits @ W2) * (1 - h**2)
        dW1, db1 = dpre.T @ emb, dpre.sum(0)
        demb = (dpre @ W1).reshape(B, T, E)
        dC = np.zeros_like(C)
        for i in range(B):  # one example at a time
            for t in range(T):
                dC[X[i, t]] += demb[i, t]
        for k, (p_, g) in enumerate(zip(params, [dC, dW1, db1, dW2, db2])):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            mh, vh = m[k] / (1 - 0.9 ** (step + 1)), v[k] / (1 - 0.999 ** (step + 1))
            p_ -= lr * (mh / (np.sqrt(vh) + 1e-8) + c.weight_decay * p_)
    split_loss("test")
    return time.perf_counter() - t0, val


def naive_torch_run_seconds(lines3, tok, steps: int) -> tuple[float, float]:
    """The same plain loop in PyTorch: autograd for the MLP, the embedding by hand."""
    import torch
    import torch.nn.functional as F

    c = CLASSIC
    T, B = c.context, c.batch_size
    t0 = time.perf_counter()
    tokens, arrays = naive_setup(lines3, tok)
    params = [torch.from_numpy(a).requires_grad_(True) for a in arrays]
    C, W1, b1, W2, b2 = params
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def batches(toks):
        return naive_batches(toks, torch.tensor)

    def forward(emb, Y):
        h = torch.tanh(emb.view(len(Y), -1) @ W1.T + b1)
        return F.cross_entropy(h @ W2.T + b2, Y)

    @torch.no_grad()
    def split_loss(name, limit=None):
        n = len(tokens[name]) // B if limit is None else min(limit, len(tokens[name]) // B)
        it = batches(tokens[name])
        total = 0.0
        for _ in range(n):
            X, Y = next(it)
            total += forward(C[X], Y).item()
        return total / n

    train = batches(tokens["train"])
    val = float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = c.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step % c.eval_every == 0 or step == steps - 1:
            split_loss("train", c.eval_train_batches)
            val = split_loss("val")
        X, Y = next(train)
        emb = C.detach()[X].requires_grad_(True)
        loss = forward(emb, Y)
        opt.zero_grad()
        loss.backward()
        dC = torch.zeros_like(C)
        for i in range(B):  # one example at a time
            for t in range(T):
                dC[X[i, t]] += emb.grad[i, t]
        C.grad = dC
        opt.step()
    split_loss("test")
    return time.perf_counter() - t0, val


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-timed", type=int, default=200)
    parser.add_argument("--run-steps", type=int, default=1000)
    parser.add_argument("--skip-runs", action="store_true", help="only the per-step timings")
    args = parser.parse_args(argv)

    splits = load_splits(CLASSIC)
    vocab = splits["tokenizer"].vocab_size
    try:
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch = None
        torch_info = "torch not installed"
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"numpy {np.__version__} (OPENBLAS_NUM_THREADS={blas}), {torch_info}")
    print(f"matmul 1024x1024 float32: {matmul_gflops():.1f} GFLOP/s")
    flops = step_flops(CLASSIC, vocab)
    alone = step_shapes_gflops(CLASSIC, vocab)
    print(f"classic step: {flops / 1e6:.1f} MFLOP in matmuls; those six matmuls alone run at "
          f"{alone:.1f} GFLOP/s ({flops / alone / 1e6:.2f} ms)")

    print(f"\nmedian ms per training step (classic config, {args.steps_timed} steps):")
    step_ms = {}
    for backend in ("numpy", "torch", "torch-module"):
        if backend != "numpy" and torch is None:
            continue
        config = TrainConfig.from_dict({**CLASSIC.to_dict(), "backend": backend})
        step_ms[backend] = median_step_ms(config, splits, args.steps_timed)
        print(f"  {backend:<13} {step_ms[backend]:7.3f} ms   {flops / step_ms[backend] / 1e6:5.1f} GFLOP/s")
    parts = numpy_breakdown_ms(CLASSIC, splits, args.steps_timed)
    print("  numpy step by part: " + ", ".join(f"{k} {v:.3f} ms" for k, v in parts.items()))
    tiny = TrainConfig.from_dict({**CLASSIC.to_dict(), "backend": "micrograd", "batch_size": 8})
    ms = median_step_ms(tiny, splits, 5, ModelConfig.from_dict({**NET.to_dict(), "n_embd": 2,
                                                                "n_hidden": 8}))
    print(f"  {'micrograd':<13} {ms:7.1f} ms   (tiny config: embedding 2, hidden 8, batch 8)")
    if "torch" in step_ms:
        ratio = step_ms["numpy"] / step_ms["torch"]
        print(f"  numpy / torch = {ratio:.2f} (target <= 1.2)")

    if args.skip_runs:
        return 0
    print(f"\nwall time of a {args.run_steps}-step mlp-classic run (evaluations, test, sample.txt included):")
    runs = {}
    for backend in ("numpy", "torch"):
        if backend == "torch" and torch is None:
            continue
        runs[backend] = cli_run_seconds(backend, args.run_steps)
        print(f"  tinylm --backend {backend:<7} {runs[backend]:6.1f} s")
    naive, val = naive_run_seconds(splits["lines"], splits["tokenizer"], args.run_steps)
    print(f"  naive loop, numpy        {naive:6.1f} s   (val loss {val:.4f})")
    if "torch" in runs:
        naive_torch, val = naive_torch_run_seconds(splits["lines"], splits["tokenizer"], args.run_steps)
        print(f"  naive loop, torch        {naive_torch:6.1f} s   (val loss {val:.4f})")
        print(f"  naive torch / tinylm torch = {naive_torch / runs['torch']:.1f}x (target >= 2); "
              f"naive numpy / tinylm torch = {naive / runs['torch']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
