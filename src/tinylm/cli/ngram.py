"""``tinylm train/sample/eval`` for the count-based n-gram models.

``train`` with no ``--order``/``--smoothing`` grid-searches order 1..6 and the
additive smoothing {0.01, 0.03, 0.1, 0.3, 1.0} on the validation split,
prints the table, keeps the best model and reports its test loss. Either
flag alone fixes that axis of the grid. ``--method kneser-ney`` searches the
order only (its discounts come from the counts) and also reports how far it
beats the best additive model on the same data.
"""

from __future__ import annotations

import argparse
import time

from tinylm import data, runs
from tinylm.cli.common import format_perplexity, print_loss, sample_and_save
from tinylm.errors import ConfigError
from tinylm.io import atomic_write_bytes, write_jsonl
from tinylm.ngram import (
    ORDERS, GridPoint, NgramConfig, NgramModel, NgramSettings, best, bigram_counts, grid_search, nll,
)
from tinylm.ngram_plot import bigram_heatmap_png
from tinylm.train import TrainConfig, perplexity

MODEL_FILE = "model.npz"
SPLITS = data.SPLIT_NAMES


def _examples(splits, tokenizer, orders, loader):
    return {
        order: {name: data.make_examples(lines, tokenizer, order - 1, loader) for name, lines in zip(SPLITS, splits)}
        for order in orders
    }


def _format_grid(points: list[GridPoint]) -> list[str]:
    smoothings = sorted({p.smoothing for p in points}, key=lambda s: (s is None, s))
    orders = sorted({p.order for p in points})
    by_key = {(p.order, p.smoothing): p.val_loss for p in points}
    header = "order " + "".join(f"{'KN' if s is None else f'a={s:g}':>10}" for s in smoothings)
    rows = [header]
    for order in orders:
        rows.append(f"{order:>5} " + "".join(f"{by_key[(order, s)]:>10.4f}" for s in smoothings))
    return rows


def train(args: argparse.Namespace, splits: tuple[list[str], list[str], list[str]], source: str,
          inputs: list[str], search: NgramSettings, config: TrainConfig) -> int:
    """Search, fit and save a count model; ``splits`` are the run's train/val/test lines."""
    out = runs.check_new_run_dir(args.out_dir, inputs)
    tokenizer = data.Tokenizer.from_lines([line for lines in splits for line in lines])
    loader = config.loader
    V = tokenizer.vocab_size
    for order in search.orders:
        NgramConfig(order, V)  # refuse an impossible order before any work
    started = time.perf_counter()
    # the directory is taken now, before the work: an unwritable -o fails at once
    store = runs.RunWriter.create(out, inputs, {"kind": "ngram", "model": "ngram", "loader": loader},
                                  tokenizer, source, splits)
    try:
        _search_and_save(store, args.num_samples, config.seed, splits, source, tokenizer, search,
                         loader)
    finally:
        store.close()
    print(f"  ({time.perf_counter() - started:.1f} s)")
    return 0


def _search_and_save(store: runs.RunWriter, num_samples: int, seed: int, splits, source: str,
                     tokenizer: data.Tokenizer, search: NgramSettings, loader: str) -> None:
    V = tokenizer.vocab_size
    orders = search.orders
    print(f"data: {source}: {sum(map(len, splits)):,} items -> train {len(splits[0]):,} / "
          f"val {len(splits[1]):,} / test {len(splits[2]):,}; vocabulary {V} characters; "
          f"loader {loader}")
    examples = _examples(splits, tokenizer, orders, loader)
    points = grid_search(examples, V, orders, search.smoothings, search.method)
    if len(points) > 1:
        label = "Kneser-Ney" if search.method == "kneser-ney" else "additive smoothing"
        print(f"grid search, val loss ({label}):")
        for row in _format_grid(points):
            print("  " + row)
    chosen = best(points)
    fitted = NgramConfig(chosen.order, V, search.method, chosen.smoothing or 0.0)
    model = NgramModel(fitted).fit(*examples[chosen.order]["train"])
    test_loss = nll(model, *examples[chosen.order]["test"])
    knob = "" if chosen.smoothing is None else f", smoothing {chosen.smoothing:g}"
    print(f"best: order {chosen.order}{knob}: train {chosen.train_loss:.4f}, val {chosen.val_loss:.4f}")
    final = {"step": 1, "test_loss": test_loss, "test_perplexity": perplexity(test_loss)}
    print(f"test loss {test_loss:.4f}, perplexity {format_perplexity(test_loss)}")
    if search.method == "kneser-ney":
        every = examples if orders == ORDERS else _examples(splits, tokenizer, ORDERS, loader)
        additive = best(grid_search(every, V))
        add_model = NgramModel(NgramConfig(additive.order, V, "additive", additive.smoothing))
        add_test = nll(add_model.fit(*every[additive.order]["train"]), *every[additive.order]["test"])
        final.update({"additive_order": additive.order, "additive_smoothing": additive.smoothing,
                      "additive_test_loss": add_test})
        print(f"Kneser-Ney beats the best additive model (order {additive.order}, smoothing "
              f"{additive.smoothing:g}, test {add_test:.4f}) by {add_test - test_loss:.4f} nats "
              "per character")

    store.update_settings({"ngram": fitted.to_dict()})
    store.log({"step": 1, "train_loss": chosen.train_loss, "val_loss": chosen.val_loss})
    store.log(final)
    store.commit({"step": 1}, model.to_arrays(), MODEL_FILE)
    written = ["manifest.json", "config.json", MODEL_FILE, "metrics.jsonl", "train/val/test.txt"]
    write_jsonl(store.out / "grid.jsonl", [vars(p) for p in points])
    written.append("grid.jsonl")
    X2, Y2 = data.make_examples(splits[0], tokenizer, 1, loader)
    try:
        png = bigram_heatmap_png(bigram_counts(X2, Y2, V), tokenizer.itos)
    except ConfigError as e:
        print(f"note: bigram.png skipped: {e}")
    else:
        atomic_write_bytes(store.out / "bigram.png", png)
        written.append("bigram.png")
    sample_and_save(model, tokenizer, num_samples, seed, splits[0], loader == "stream",
                    store.out / "samples.txt")
    written.append("samples.txt")
    print(f"wrote {store.out}/: {', '.join(written)}", end="")


def evaluate(run: runs.Run) -> None:
    model, loader = run.model, run.loader
    print(f"order {model.config.order} {model.config.method} model, loader {loader}")
    for name, lines in zip(SPLITS, run.lines3):
        X, Y = data.make_examples(lines, run.tokenizer, model.context, loader)
        print_loss(name, nll(model, X, Y))
