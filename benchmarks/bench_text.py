"""Figures of --format text: preparing a large corpus, and training beside plain PyTorch.

    python benchmarks/bench_text.py corpus --mb 100 -o py100m.txt   # just the text
    python benchmarks/bench_text.py prepare [--mb 100]     # read, check, split, encode, write
    python benchmarks/bench_text.py side-by-side [--mb 2.3] [--steps 2000]

The corpus is the Python standard library's own sources (every .py file under
it, concatenated, repeated if the machine has fewer than asked), so the
figures can be made again on any machine with Python.

``prepare`` runs ``tinylm train --format text`` for one step of a default
Transformer in a child process and prints the time until training starts
(reading, checking, splitting, encoding, writing the run directory) and the
peak resident memory of the whole run.

``side-by-side`` trains the same Transformer (4 layers, 4 heads, 128 wide,
block 64, batch 12, AdamW lr 1e-3, one thread) on the same text for the same
steps twice, each in its own child process: with ``tinylm train --backend
torch-module`` and with a plain PyTorch loop written below (random windows
from a memory-mapped uint16 array, ``F.scaled_dot_product_attention``,
``torch.optim.AdamW``), evaluating the same held-out windows at the same
steps. It prints each one's wall time, peak memory and final val loss.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1"}
MODEL = dict(n_layers=4, n_heads=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3)


def corpus(path: Path, megabytes: float) -> Path:
    """The standard library's sources, concatenated to ``megabytes`` MB (10**6 bytes)."""
    want = int(megabytes * 1e6)
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    with open(path, "wb") as out:
        written = 0
        while written < want:
            for source in sources:
                try:
                    data = source.read_bytes()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                data = data[:want - written]
                out.write(data)
                written += len(data)
                if written >= want:
                    break
    return path


# Runs a command as its only child and reports that child's peak resident memory.
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def child(command: list[str], env=None) -> tuple[float, int, str]:
    """(seconds, peak resident bytes, output) of a command run to its end."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAP, *command], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")][-1]
    return seconds, int(peak.split()[1]) * 1024, done.stdout + done.stderr


def prepare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus(Path(tmp) / "corpus.txt", args.mb)
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "tinylm", "train", "--format", "text", "-i", str(text),
                   "-o", str(run), "--model", "transformer", "--steps", "1", "-n", "0",
                   "--eval-tokens", "1000"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.PIPE, text=True)
        started = None
        for line in proc.stdout:
            if line.startswith("training ") and started is None:
                started = time.perf_counter() - t0
        proc.wait()
        total = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(f"corpus: {text.stat().st_size / 1e6:.1f} MB of Python sources; one thread; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"prepared (read, checked, split, encoded, written) in {started:.1f} s; one step "
              f"and the end in {total:.1f} s; peak resident memory {peak / 2**30:.2f} GiB")


PLAIN = r'''
import sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)
tokens_path, units_path, steps, eval_every, L, H, C, T, B, lr = sys.argv[1:]
steps, eval_every, L, H, C, T, B = map(int, (steps, eval_every, L, H, C, T, B)); lr = float(lr)
data = np.load(tokens_path, mmap_mode="r")          # the whole text, uint16
units = np.load(units_path)                          # rows: split (0 train, 1 val, 2 test), end, scored
train_end = int(units[0, 1]); units = units[1:]
V = int(data.max()) + 1
class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.ln1, s.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        s.qkv, s.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        s.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"), nn.Linear(4 * C, C))
    def forward(s, x):
        b, t, _ = x.shape
        q, k, v = s.qkv(s.ln1(x)).view(b, t, 3, H, C // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, C)
        x = x + s.proj(y)
        return x + s.mlp(s.ln2(x))
class GPT(nn.Module):
    def __init__(s):
        super().__init__(); s.wte, s.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        s.blocks = nn.Sequential(*[Block() for _ in range(L)]); s.ln_f = nn.LayerNorm(C)
        s.head = nn.Linear(C, V, bias=False)
    def forward(s, idx):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1]))
        return s.head(s.ln_f(s.blocks(x)))
torch.manual_seed(42); model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
g = np.random.default_rng(42)
def evaluate(split):
    """The same windows as tinylm's evaluation (end, targets scored), 128 at a time."""
    rows = units[units[:, 0] == split][:, 1:]
    model.eval(); total = 0.0; n = 0
    with torch.inference_mode():
        for lo in range(0, len(rows), 128):
            e, k = rows[lo:lo + 128, 0], rows[lo:lo + 128, 1]
            idx = torch.from_numpy(np.stack([data[x - T - 1:x - 1] for x in e]).astype(np.int64))
            tgt = torch.from_numpy(np.stack([data[x - T:x] for x in e]).astype(np.int64))
            tgt[torch.arange(T)[None, :] < torch.from_numpy(T - k)[:, None]] = -1
            total += F.cross_entropy(model(idx).reshape(-1, V), tgt.reshape(-1), ignore_index=-1,
                                     reduction="sum").item()
            n += int(k.sum())
    model.train(); return total / n
for step in range(steps):
    if step % eval_every == 0 or step == steps - 1:
        train_loss, val = evaluate(0), evaluate(1)
    starts = g.integers(1, train_end - T, B)
    x = torch.from_numpy(np.stack([data[s - 1:s - 1 + T] for s in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[s:s + T] for s in starts]).astype(np.int64))
    loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
print(f"val {val:.4f}, test {evaluate(2):.4f}")
'''


def side_by_side(args: argparse.Namespace) -> None:
    import numpy as np

    from tinylm import runs, text as text_mod

    with tempfile.TemporaryDirectory() as tmp:
        path = corpus(Path(tmp) / "corpus.txt", args.mb)
        run = Path(tmp) / "tinylm"
        m = MODEL
        flags = ["--format", "text", "-i", str(path), "-o", str(run), "--model", "transformer",
                 "--backend", args.backend, "--n-layers", str(m["n_layers"]), "--n-heads",
                 str(m["n_heads"]), "--n-embd", str(m["n_embd"]), "--block-size",
                 str(m["block_size"]), "--batch-size", str(m["batch_size"]), "--lr", str(m["lr"]),
                 "--lr-schedule", "constant", "--steps", str(args.steps), "--eval-every",
                 str(args.eval_every), "-n", "0", "--eval-tokens", str(args.eval_tokens)]
        seconds, peak, out = child([sys.executable, "-m", "tinylm", "train", *flags], ONE_THREAD)
        val = [line for line in out.splitlines() if line.startswith("done in")][-1]
        print(f"text: {path.stat().st_size / 1e6:.1f} MB of Python sources; {args.steps} steps, "
              f"evaluations every {args.eval_every} of {args.eval_tokens:,} characters a split; "
              f"one thread; load average {os.getloadavg()[0]:.1f}")
        print(f"tinylm ({args.backend}): {seconds:.1f} s, peak {peak / 2**20:.0f} MiB; {val}")
        # the plain loop reads the same tokens and scores the same evaluation windows
        opened = runs.open_run(run)
        tokens = np.concatenate(opened.tokens).astype(np.uint16)
        np.save(Path(tmp) / "tokens.npy", tokens)
        rows, offset = [[0, len(opened.tokens[0]), 0]], 0
        for k, split in enumerate(opened.tokens):
            plan = text_mod.units(text_mod.TextSplit(("train", "val", "test")[k], split, 0,
                                                     m["block_size"]), args.eval_tokens, 42)
            keep = plan.ends + offset >= m["block_size"] + 1  # the very first window has no token before it
            rows += [[k, e + offset, s] for e, s in zip(plan.ends[keep], plan.scored[keep])]
            offset += len(split)
        np.save(Path(tmp) / "units.npy", np.array(rows, dtype=np.int64))
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)
        seconds2, peak2, out2 = child(
            [sys.executable, str(script), str(Path(tmp) / "tokens.npy"), str(Path(tmp) / "units.npy"),
             str(args.steps), str(args.eval_every), str(m["n_layers"]), str(m["n_heads"]),
             str(m["n_embd"]), str(m["block_size"]), str(m["batch_size"]), str(m["lr"])],
            ONE_THREAD)
        print(f"plain PyTorch loop: {seconds2:.1f} s, peak {peak2 / 2**20:.0f} MiB; "
              f"{out2.splitlines()[0]}")
        print(f"tinylm / plain: time {seconds / seconds2:.2f}x, peak memory {peak / peak2:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--mb", type=float, default=100.0)
    c.add_argument("-o", "--out", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--mb", type=float, default=100.0)
    b = sub.add_parser("side-by-side")
    b.add_argument("--mb", type=float, default=2.3)
    b.add_argument("--steps", type=int, default=2000)
    b.add_argument("--eval-every", type=int, default=500)
    b.add_argument("--eval-tokens", type=int, default=32_768)
    b.add_argument("--backend", default="torch-module", choices=("torch-module", "torch", "numpy"))
    args = p.parse_args()
    if args.what == "corpus":
        print(f"wrote {corpus(Path(args.out), args.mb)}")
    else:
        (prepare if args.what == "prepare" else side_by_side)(args)


if __name__ == "__main__":
    main()
