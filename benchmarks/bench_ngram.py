"""Time the n-gram grid search: losses by lookup (tinylm.ngram) against losses from whole rows.

Usage: python benchmarks/bench_ngram.py [--repeats N] [--kn-repeats N]

The grid ``tinylm train`` searches on the bundled names (words loader): 6
orders x 5 additive smoothings, each evaluated on train and val, and the
Kneser-Ney search over the 6 orders. Each is timed two ways in this one
process, alternating so both see the same machine load:

- rows: the evaluation tinylm used to do, kept here only as the reference
  this measures against: per grid point and split, a (B, V) row of
  probabilities for every example, of which the target's column is kept;
- lookup: ``tinylm.ngram.grid_search``: per order and split, the target's
  count, the context's total and its distinct continuations are looked up
  once, and each smoothing is a few operations per example on them.

Both count each order once with ``NgramModel.fit`` (sparse counts: the rows
way gathers whole rows with ``CountTable.dense``). The fits are also timed
alone, since for Kneser-Ney they are most of what is left.
Prints each time, the medians, their ratio and the load average, and checks
that both ways give the same figures. Target on the 2-core machine: the
default grid >= 5x faster by lookup.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from tinylm import data
from tinylm.ngram import ORDERS, SMOOTHINGS, GridPoint, NgramConfig, NgramModel, grid_search


def rows_probs(model: NgramModel, idx: np.ndarray) -> np.ndarray:
    """(B, V) probabilities built whole, row sums and continuation counts taken from the rows."""
    V = model.config.vocab_size
    if model.config.method == "additive":
        a, table = model.config.smoothing, model.tables[0]
        rows, found = table.lookup(idx)
        counts = np.where(found[:, None], table.dense(rows), 0.0)
        return (counts + a) / (counts.sum(axis=1, keepdims=True) + a * V)
    p = np.full((len(idx), V), 1.0 / V)
    for k, (table, D) in enumerate(zip(model.tables, model.discounts)):
        rows, found = table.lookup(idx[:, idx.shape[1] - k :])
        counts = table.dense(rows)
        total = counts.sum(axis=1, keepdims=True)
        types = (counts > 0).sum(axis=1, keepdims=True)
        mixed = (np.maximum(counts - D, 0.0) + D * types * p) / np.where(total > 0, total, 1.0)
        p = np.where(found[:, None] & (total > 0), mixed, p)
    return p


def rows_nll(model: NgramModel, idx: np.ndarray, targets: np.ndarray, chunk: int = 65536) -> float:
    total = 0.0
    for start in range(0, len(targets), chunk):
        p = rows_probs(model, idx[start : start + chunk])
        total += -np.log(p[np.arange(len(p)), targets[start : start + chunk]]).sum()
    return float(total / len(targets))


def rows_grid_search(examples, vocab_size: int, method: str) -> list[GridPoint]:
    """The grid as it was searched before lookups: counts once per order, rows per smoothing."""
    points = []
    for order in ORDERS:
        (Xtr, Ytr), (Xva, Yva) = examples[order]["train"], examples[order]["val"]
        counted = None
        for a in SMOOTHINGS if method == "additive" else (None,):
            model = NgramModel(NgramConfig(order, vocab_size, method, a if a is not None else 0.0))
            if counted is None:
                counted = model.fit(Xtr, Ytr)
            else:
                model.tables, model.discounts = counted.tables, counted.discounts
            points.append(GridPoint(order, method, a, rows_nll(model, Xtr, Ytr), rows_nll(model, Xva, Yva)))
    return points


def fits_only(examples, vocab_size: int, method: str) -> None:
    for order in ORDERS:
        NgramModel(NgramConfig(order, vocab_size, method, 0.1)).fit(*examples[order]["train"])


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def compare(name: str, examples, vocab_size: int, method: str, repeats: int) -> None:
    ways = {
        "rows": lambda: rows_grid_search(examples, vocab_size, method),
        "lookup": lambda: grid_search(examples, vocab_size, method=method),
        "fits": lambda: fits_only(examples, vocab_size, method),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    results = {}
    print(f"{name} ({load()} before)")
    for _ in range(repeats):
        for way, run in ways.items():  # alternating, so a change of load hits every way alike
            start = time.perf_counter()
            results[way] = run()
            times[way].append(time.perf_counter() - start)
    for way, ts in times.items():
        print(f"  {way:>11}: median {statistics.median(ts):6.3f} s  ({', '.join(f'{t:.3f}' for t in ts)})")
    rows, lookup = (statistics.median(times[w]) for w in ("rows", "lookup"))
    pairs = [r / n for r, n in zip(times["rows"], times["lookup"])]
    print(f"  rows / lookup: {rows / lookup:.1f}x (pairwise {min(pairs):.1f}x..{max(pairs):.1f}x); "
          f"{load()} after")
    diff = max(max(abs(a.train_loss - b.train_loss), abs(a.val_loss - b.val_loss))
               for a, b in zip(results["rows"], results["lookup"]))
    same = ([(p.order, p.smoothing) for p in results["rows"]]
            == [(p.order, p.smoothing) for p in results["lookup"]])
    print(f"  same grid: {same}; largest difference of a loss: {diff:.1e}")
    assert same and diff <= 1e-12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timings of each way, default grid")
    parser.add_argument("--kn-repeats", type=int, default=3, help="timings of each way, Kneser-Ney")
    args = parser.parse_args()

    lines = data.read_lines(data.default_dataset())
    splits = data.split_lines(lines)
    tokenizer = data.Tokenizer.from_lines([line for split in splits for line in split])
    examples = {order: {name: data.word_examples(split, tokenizer, order - 1)
                        for name, split in zip(("train", "val"), splits)} for order in ORDERS}
    V = tokenizer.vocab_size
    print(f"bundled names: {len(examples[1]['train'][1]):,} train and {len(examples[1]['val'][1]):,} "
          f"val examples, vocabulary {V}; {os.cpu_count()} cores")
    compare(f"default grid, {len(ORDERS)} orders x {len(SMOOTHINGS)} smoothings", examples, V, "additive",
            args.repeats)
    compare(f"Kneser-Ney, {len(ORDERS)} orders", examples, V, "kneser-ney", args.kn_repeats)


if __name__ == "__main__":
    main()
