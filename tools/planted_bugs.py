"""Plant single-line bugs in tinylm's numeric core, one at a time, and see which the tests catch.

A test suite that passes says little until it is shown to fail when the
code is wrong. ``MUTATIONS`` is a table of small, plausible mistakes in the
arithmetic (a backward pass missing a term, a mask aligned the wrong way, an
average weighted by the wrong count, an optimizer constant off): each is an
exact fragment of one line of a file under ``src/tinylm`` and what replaces
it. For each mutation this script

1. finds the fragment, exactly once, in a private copy of the repository
   (tracked and untracked, not ignored, files; the working tree itself is
   never touched, so that others may keep editing it);
2. rewrites that one line, runs ``pytest -x -q -m "not slow"`` there with
   ``PYTHONPATH`` set to the copy's ``src`` (checked once: ``tinylm`` must be
   imported from the copy);
3. records whether the suite failed ("caught", with the first failing test)
   or passed ("SURVIVED"), and restores the line.

A fragment that is no longer in its file is reported as "stale" (the code
moved; update the table), and one found more than once as "ambiguous";
neither is ever skipped silently. The unmutated copy is run first (the
baseline): if it fails, no mutation result would mean anything.

Run from the repository root:

    python tools/planted_bugs.py --list                   # the table, and stale fragments
    python tools/planted_bugs.py                          # every mutation, the default suite
    python tools/planted_bugs.py --only embedding-scatter-add --tests tests/test_layer_table.py
    python tools/planted_bugs.py --tests tests/test_layers_numpy.py tests/test_rng.py

The exit status is 0 when every mutation was caught, 1 otherwise (a
survivor, a stale or ambiguous fragment, or a failing baseline).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """Replace ``old``, an exact fragment of one line of ``path``, by ``new``."""

    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    breaks: str  # what is wrong once it is planted


NUMPY = "src/tinylm/layers/numpy_layers.py"
TORCH = "src/tinylm/layers/torch_layers.py"

MUTATIONS = [
    # --- the three branches the layer table was written to reach --------------------------
    Mutation("embedding-scatter-add", NUMPY,
             "np.add.at(dW, idx, d)", "dW[idx] += d",
             "large-vocabulary embedding backward keeps one gradient of a repeated id, "
             "not their sum"),
    Mutation("attention-cache-mask-numpy", NUMPY,
             "k=Tk - T + 1)", "k=1)",
             "numpy attention: with past keys, the mask is aligned top-left, hiding most of them"),
    # the attention arithmetic of both torch backends (torch_layers.attend, which the
    # nn.Module layer calls too)
    Mutation("attention-cache-mask-torch-module", TORCH,
             "attn_mask=~future_mask(T, Tk, x.device)", "is_causal=True",
             "torch attention: SDPA's is_causal aligns top-left when past keys are cached"),
    Mutation("eval-chunks-weighted-by-rows", "src/tinylm/batches.py",
             "yield X, Y, int(scored.sum())", "yield X, Y, len(X)",
             "evaluation chunks of a sequence split weighted by rows, not by scored targets"),
    Mutation("evaluate-weights-rows", "src/tinylm/train.py",
             "enumerate(eval_batches(split, batch_size, max_batches))",
             "enumerate((X, Y, len(X)) for X, Y, _ in "
             "eval_batches(split, batch_size, max_batches))",
             "evaluate() weights each chunk's mean by its rows, not by its scored targets"),
    # --- numpy backward passes --------------------------------------------------------------
    Mutation("linear-bias-grad-mean", NUMPY,
             "self.bias.grad = dout2.sum(axis=0)", "self.bias.grad = dout2.mean(axis=0)",
             "Linear's bias gradient averaged over the examples instead of summed"),
    Mutation("tanh-derivative", NUMPY,
             "np.subtract(1, dx, out=dx)", "np.subtract(1, self.out, out=dx)",
             "Tanh backward uses 1 - tanh instead of 1 - tanh**2"),
    Mutation("batchnorm-mean-path", NUMPY,
             "n * dxhat - dxhat.sum(axis=0)", "n * dxhat - dxhat.mean(axis=0)",
             "BatchNorm1d training backward: the batch mean's path scaled by 1/n"),
    Mutation("batchnorm-eval-backward", NUMPY,
             "return (dxhat * self.inv_std).reshape(self.in_shape)",
             "return dxhat.reshape(self.in_shape)",
             "BatchNorm1d eval backward forgets the 1/std of the running statistics"),
    Mutation("batchnorm-running-var-biased", NUMPY,
             "m * var * (n / (n - 1))", "m * var",
             "numpy BatchNorm1d tracks the biased variance (PyTorch tracks the unbiased one)"),
    Mutation("layernorm-variance-path", NUMPY,
             "dx -= np.multiply(xhat, mean_dxhat_xhat[:, None], out=dxhat_xhat)",
             "dx -= mean_dxhat_xhat[:, None]",
             "LayerNorm backward: the variance's term loses its xhat weighting"),
    Mutation("gelu-derivative", NUMPY,
             "g = np.multiply(x, 3 * 0.044715)", "g = np.multiply(x, 0.044715)",
             "GELU backward: d/dx of x**3 taken as x**2"),
    Mutation("attention-softmax-backward", NUMPY,
             "dscores -= ((datt * self.att).reshape(-1, T) @",
             "dscores -= 0 * ((datt * self.att).reshape(-1, T) @",
             "attention softmax backward: the diagonal of the Jacobian only"),
    Mutation("attention-backward-scale", NUMPY,
             "dscores *= self.scale", "dscores *= 1.0",
             "attention backward forgets the 1/sqrt(head size) of the scores"),
    Mutation("attention-dropout-values-grad", NUMPY,
             "np.matmul(self.attn_dropout.out.transpose(0, 1, 3, 2), dy, out=dv)",
             "np.matmul(self.att.transpose(0, 1, 3, 2), dy, out=dv)",
             "attention backward: the values' gradient reads the weights before dropout"),
    Mutation("rnn-tanh-derivative", NUMPY,
             "dpre[t] = dh * (1 - self.out[:, t] ** 2)", "dpre[t] = dh * (1 - self.out[:, t])",
             "RNN backpropagation through time: tanh's derivative 1 - h instead of 1 - h**2"),
    Mutation("rnn-truncated-bptt", NUMPY,
             "dx[:, t], dh = dxh[:, :C], dxh[:, C:]", "dx[:, t], dh = dxh[:, :C], 0 * dxh[:, C:]",
             "RNN backward does not carry the hidden state's gradient into the step before"),
    Mutation("gru-reset-gate-path", NUMPY,
             "dh += drh * r", "dh += drh",
             "GRU backward: the gradient through r * h misses the factor r"),
    Mutation("gru-update-gate", NUMPY,
             "dz = dnext * (hbar - h)", "dz = dnext * hbar",
             "GRU backward: the update gate's gradient forgets that z also scales h"),
    Mutation("transformer-position-grad", NUMPY,
             "self.wpe.backward(dx.sum(axis=0))", "self.wpe.backward(dx[0])",
             "Transformer backward: position embeddings get the first row's gradient only"),
    Mutation("dropout-backward", NUMPY,
             "return dout if self.mask is None else dout * self.mask", "return dout",
             "Dropout backward lets the gradient through the dropped elements"),
    Mutation("cross-entropy-batch-mean", NUMPY,
             "dlogits /= B", "dlogits /= 1",
             "CrossEntropy backward: the gradient of the sum, not of the mean"),
    Mutation("softmax-not-shifted", "src/tinylm/losses.py",
             "shifted = logits - logits.max(axis=1, keepdims=True)", "shifted = logits",
             "cross-entropy exponentiates raw logits: overflow for large ones"),
    # --- raw torch layers and what the backends share -----------------------------------------
    Mutation("future-mask-torch", TORCH,
             ".triu(Tk - T + 1)", ".triu(1)",
             "raw-tensor attention: with past keys the mask is aligned top-left"),
    Mutation("attention-dropout-unscaled-torch", TORCH,
             "scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // attn.n_head))",
             "scores = q @ k.transpose(-2, -1)",
             "torch attention with dropout (its softmax written out) forgets 1/sqrt(head size)"),
    Mutation("batchnorm-unbiased-torch", TORCH,
             "var = x.var(dims, correction=0)", "var = x.var(dims)",
             "raw-tensor BatchNorm1d normalises the batch with the unbiased variance"),
    Mutation("batchnorm-running-var-torch", TORCH,
             ".add_(m * var * (n / (n - 1)))", ".add_(m * var)",
             "raw-tensor BatchNorm1d tracks the biased variance"),
    Mutation("gru-interpolation-torch", TORCH,
             "h = (1 - z) * h + z * hbar", "h = z * h + (1 - z) * hbar",
             "raw-tensor and nn.Module GRU: the update gate read the wrong way round"),
    Mutation("cached-positions-torch", TORCH,
             "return torch.arange(past, past + T, device=idx.device)",
             "return torch.arange(T, device=idx.device)",
             "torch Transformers read through a cache give new tokens the positions 0, 1, ..."),
    Mutation("recurrent-cache-first-state", "src/tinylm/layers/base.py",
             'cache.slot(layer)["h"] = hs[:, -1]', 'cache.slot(layer)["h"] = hs[:, 0]',
             "a cached recurrent net steps on from its first new state, not its last"),
    # --- the random numbers ----------------------------------------------------------------
    Mutation("rng-vector-shift", "src/tinylm/rng.py",
             "s = s ^ (s << np.uint64(25))", "s = s ^ (s << np.uint64(24))",
             "the vectorised xorshift path no longer gives the scalar path's numbers"),
    Mutation("rng-box-muller-sin", "src/tinylm/rng.py",
             "z[1::2] = radius * np.sin(2.0 * math.pi * u2)",
             "z[1::2] = radius * np.cos(2.0 * math.pi * u2)",
             "the second normal of each Box-Muller pair is the first one again"),
    Mutation("rng-24-bits", "src/tinylm/rng.py",
             "return (self.random_u32() >> 8) / 16777216.0",
             "return (self.random_u32() >> 9) / 16777216.0",
             "random() gives 23-bit floats in [0, 0.5)"),
    # --- the optimizer and the schedule -------------------------------------------------------
    Mutation("adamw-decay-without-lr", "src/tinylm/optim.py",
             "p *= dt(1 - lr * self.weight_decay)", "p *= dt(1 - self.weight_decay)",
             "AdamW's decoupled weight decay not scaled by the learning rate"),
    Mutation("adamw-first-moment", "src/tinylm/optim.py",
             "t *= dt(1 - beta1)", "t *= dt(beta1)",
             "AdamW's first moment mixes in the gradient with weight beta1 instead of 1 - beta1"),
    Mutation("adamw-bias-correction2", "src/tinylm/optim.py",
             "denom /= dt(bias_correction2_sqrt)", "denom /= dt(bias_correction2)",
             "AdamW divides by the second moment's bias correction, not by its square root"),
    Mutation("cosine-schedule-span", "src/tinylm/optim.py",
             "(step - warmup) / (steps - warmup)", "(step - warmup) / steps",
             "after a warmup, the cosine schedule does not reach its end"),
    # --- batches and evaluation -----------------------------------------------------------
    Mutation("eval-cut-one-position-short", "src/tinylm/batches.py",
             "used = int(np.flatnonzero(scored.any(axis=0)).max(initial=0)) + 1",
             "used = int(np.flatnonzero(scored.any(axis=0)).max(initial=0))",
             "a chunk's padding cut drops its last scored position"),
    Mutation("stream-eval-batches", "src/tinylm/batches.py",
             "n_batches = max(1, split.n_tokens // batch_size)",
             "n_batches = max(1, len(split) // batch_size)",
             "stream evaluation makes fewer batches than the protocol's len(tokens) // B"),
    # --- the count models -----------------------------------------------------------------
    # --- the data path ---------------------------------------------------------------------------
    Mutation("item-lengths-from-zero", "src/tinylm/data.py",
             "return np.diff(ends, prepend=-1)", "return np.diff(ends, prepend=0)",
             "the first item's length in tokens misses one: block sizes and rows come out short"),
    # --- sampling ------------------------------------------------------------------------------
    Mutation("top-k-keeps-one-fewer", "src/tinylm/sample.py",
             "z[z < kth] = -np.inf", "z[z <= kth] = -np.inf",
             "top-k sampling drops the k-th most likely token too"),
    Mutation("temperature-ignored", "src/tinylm/sample.py",
             "            z /= temperature", "            z /= 1.0",
             "sampling at any temperature samples at 1"),
    Mutation("pick-first-index-at-or-above", "src/tinylm/sample.py",
             'side="right"', 'side="left"',
             "a coin equal to a running sum takes the token whose sum it is, not the next"),
    Mutation("additive-smoothing-denominator", "src/tinylm/ngram.py",
             "return (c.count + a) / (c.total + a * V)", "return (c.count + a) / (c.total + a)",
             "additive smoothing's probabilities no longer sum to 1"),
    Mutation("kneser-ney-backoff-mass", "src/tinylm/ngram.py",
             "+ D * c.types * p) / safe_total", "+ D * p) / safe_total",
             "interpolated Kneser-Ney's lower-order weight forgets the number of continuations"),
    Mutation("context-key-base", "src/tinylm/ngram.py",
             "keys = keys * vocab_size + idx[:, t]", "keys = keys * (vocab_size - 1) + idx[:, t]",
             "context keys collide: different contexts share counts"),
]


# --- the copy ------------------------------------------------------------------------------

def repository_files(root: Path) -> list[str]:
    """The files a clone plus the untracked work would have: tracked and untracked files
    that git does not ignore (read-only git), or src, tests, tools and the project files."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            check=True, capture_output=True).stdout.decode()
        names = sorted({name for name in out.split("\0") if name})
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(root)) for top in ("src", "tests", "tools")
                 for p in (root / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        names += [n for n in ("pyproject.toml", "setup.cfg", "pytest.ini") if (root / n).exists()]
    # a tracked file deleted in the working tree is not part of it
    return [name for name in names if (root / name).is_file()]


def copy_repository(root: Path, dest: Path) -> None:
    for name in repository_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy / "tests")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # no bytecode: a line mutated and restored within one second, at the same size, could
    # otherwise be run from a stale .pyc
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_import(copy: Path) -> str:
    """Where ``tinylm`` is imported from in the copy's environment; it must be the copy."""
    out = subprocess.run([sys.executable, "-c", "import tinylm; print(tinylm.__file__)"],
                         cwd=copy, env=environment(copy), capture_output=True, text=True)
    where = out.stdout.strip()
    if out.returncode != 0 or not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"tinylm is not imported from the copy {copy}: {where or out.stderr}")
    return where


# --- one run of the suite ----------------------------------------------------------------------

# "FAILED tests/x.py::test[id with spaces] - AssertionError: ...": the node id, up to " - "
FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - |$)", re.MULTILINE)


@dataclass
class Outcome:
    status: str        # caught, SURVIVED, stale, ambiguous, timeout, baseline ok / FAILED
    first: str = ""    # the first failing test, or why
    seconds: float = 0.0


def run_suite(copy: Path, tests: list[str], timeout: float) -> Outcome:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "-rfE", *tests]
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome("timeout", f"no result in {timeout:.0f} s", time.monotonic() - start)
    seconds = time.monotonic() - start
    if out.returncode == 0:
        return Outcome("passed", "", seconds)
    text = out.stdout + out.stderr
    failed = FAILED.search(text)
    if failed:
        return Outcome("failed", failed.group(2), seconds)
    # a collection error, no tests collected (5), an internal error: the last lines say why
    tail = " | ".join(line for line in text.strip().splitlines()[-3:])
    return Outcome("failed", f"pytest exit {out.returncode}: {tail[:200]}", seconds)


def locate(text: str, m: Mutation) -> tuple[int, str] | str:
    """The start of ``m.old`` in ``text``, or why the mutation cannot be applied."""
    count = text.count(m.old)
    if count == 0:
        return "stale"
    if count > 1:
        return "ambiguous"
    return text.index(m.old), ""


def try_mutation(copy: Path, m: Mutation, tests: list[str], timeout: float) -> Outcome:
    path = copy / m.path
    if not path.is_file():
        return Outcome("stale", f"{m.path} is gone")
    original = path.read_text(encoding="utf-8")
    where = locate(original, m)
    if isinstance(where, str):
        return Outcome(where, f"{m.old!r} found {original.count(m.old)} times in {m.path}")
    at = where[0]
    path.write_text(original[:at] + m.new + original[at + len(m.old):], encoding="utf-8")
    try:
        result = run_suite(copy, tests, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    if result.status == "passed":
        return Outcome("SURVIVED", "", result.seconds)
    if result.status == "timeout":
        return result
    return Outcome("caught", result.first, result.seconds)


# --- the command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this mutation (repeat, or separate names with commas)")
    parser.add_argument("--tests", nargs="+", default=[], metavar="PATH",
                        help="test files or node ids to run, relative to the repository root "
                             "(default: the whole default suite)")
    parser.add_argument("--list", action="store_true",
                        help="print the table and whether each fragment is found; run nothing")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated copy")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds one run of the suite may take (default 1200)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository (default: the one this script is in)")
    args = parser.parse_args(argv)

    only = [name for item in args.only for name in item.split(",") if name]
    unknown = sorted(set(only) - {m.name for m in MUTATIONS})
    if unknown:
        parser.error(f"no mutation named {', '.join(unknown)}; see --list")
    chosen = [m for m in MUTATIONS if not only or m.name in only]
    width = max(len(m.name) for m in chosen)

    if args.list:
        bad = 0
        for m in chosen:
            path = args.root / m.path
            state = locate(path.read_text(encoding="utf-8"), m) if path.is_file() else "stale"
            state = state if isinstance(state, str) else "found"
            bad += state != "found"
            print(f"{state:9} {m.name:{width}}  {m.path}  {m.breaks}")
        return 1 if bad else 0

    with tempfile.TemporaryDirectory(prefix="planted-bugs-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repository(args.root, copy)
        print(f"copy: {copy}  (tinylm from {check_import(copy)})")
        print(f"tests: {' '.join(args.tests) or 'the default suite'}", flush=True)
        if not args.no_baseline:
            base = run_suite(copy, args.tests, args.timeout)
            print(f"baseline: {base.status} in {base.seconds:.0f} s {base.first}", flush=True)
            if base.status != "passed":
                print("the unmutated copy fails: no mutation result would mean anything")
                return 1
        outcomes = []
        for m in chosen:
            outcome = try_mutation(copy, m, args.tests, args.timeout)
            outcomes.append((m, outcome))
            print(f"{outcome.status:9} {m.name:{width}}  {outcome.seconds:6.1f} s  "
                  f"{outcome.first or '-'}", flush=True)

    counts: dict[str, int] = {}
    for _, outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print("\nsummary: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for m, outcome in outcomes:
        if outcome.status != "caught":
            print(f"  {outcome.status}: {m.name} ({m.path}): {m.breaks}")
    return 0 if counts.get("caught", 0) == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
