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
torch-module`` and with the plain PyTorch loop of ``plain_loop.py`` (random
windows from a memory-mapped uint16 array, ``F.scaled_dot_product_attention``,
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


# The plain PyTorch loop run beside tinylm (as a script, in its own child process).
PLAIN = Path(__file__).resolve().with_name("plain_loop.py")


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
        seconds2, peak2, out2 = child(
            [sys.executable, str(PLAIN), str(Path(tmp) / "tokens.npy"), str(Path(tmp) / "units.npy"),
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
