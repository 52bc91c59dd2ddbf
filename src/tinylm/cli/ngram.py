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
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np

from tinylm import data
from tinylm.cli.common import print_samples
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.io import atomic_write_bytes, atomic_write_text, check_out_dir, make_out_dir, read_json, write_json, write_jsonl
from tinylm.ngram import (
    ORDERS, GridPoint, NgramConfig, NgramModel, NgramSettings, best, bigram_counts, grid_search, nll,
)
from tinylm.ngram_plot import bigram_heatmap_png
from tinylm.rng import RNG
from tinylm.sample import mark_known, sample_items
from tinylm.train import TrainConfig

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
          search: NgramSettings, config: TrainConfig) -> int:
    """Search, fit and save a count model; ``splits`` are the run's train/val/test lines."""
    check_out_dir(args.out_dir)
    tokenizer = data.Tokenizer.from_lines([line for lines in splits for line in lines])
    loader = config.loader
    V = tokenizer.vocab_size
    orders, smoothings = search.orders, search.smoothings
    for order in orders:
        NgramConfig(order, V)  # refuse an impossible order before any work
    started = time.perf_counter()
    print(f"data: {source}: {sum(map(len, splits)):,} items -> train {len(splits[0]):,} / "
          f"val {len(splits[1]):,} / test {len(splits[2]):,}; vocabulary {V} characters; "
          f"loader {loader}")
    examples = _examples(splits, tokenizer, orders, loader)

    points = grid_search(examples, V, orders, smoothings, search.method)
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
    print(f"test loss {test_loss:.4f}, perplexity {math.exp(test_loss):.3f}")
    comparison = None
    if search.method == "kneser-ney":
        every = examples if orders == ORDERS else _examples(splits, tokenizer, ORDERS, loader)
        additive = best(grid_search(every, V))
        add_model = NgramModel(NgramConfig(additive.order, V, "additive", additive.smoothing))
        add_test = nll(add_model.fit(*every[additive.order]["train"]), *every[additive.order]["test"])
        comparison = {"additive_order": additive.order, "additive_smoothing": additive.smoothing,
                      "additive_test_loss": add_test}
        print(f"Kneser-Ney beats the best additive model (order {additive.order}, smoothing "
              f"{additive.smoothing:g}, test {add_test:.4f}) by {add_test - test_loss:.4f} nats per character")

    X2, Y2 = data.make_examples(splits[0], tokenizer, 1, loader)
    png = _heatmap(bigram_counts(X2, Y2, V), tokenizer)

    out = make_out_dir(args.out_dir)
    data.save_splits(out, splits)
    arrays = model.to_arrays()
    blob = _npz_bytes(arrays)
    atomic_write_bytes(out / MODEL_FILE, blob)
    write_json(out / "config.json", {
        "model": "ngram", "ngram": fitted.to_dict(), "loader": loader, "vocab": tokenizer.to_list(),
        "input": source, "split_seed": 42, "model_sha256": hashlib.sha256(blob).hexdigest(),
    })
    write_jsonl(out / "grid.jsonl", [vars(p) for p in points])
    final = {"step": 1, "test_loss": test_loss, "test_perplexity": math.exp(test_loss)}
    if comparison:
        final.update(comparison)
    write_jsonl(out / "metrics.jsonl", [
        {"step": 1, "train_loss": chosen.train_loss, "val_loss": chosen.val_loss}, final])
    written = ["config.json", MODEL_FILE, "metrics.jsonl", "grid.jsonl", "train/val/test.txt"]
    if png is not None:
        atomic_write_bytes(out / "bigram.png", png)
        written.append("bigram.png")
    samples = _samples(model, tokenizer, {"loader": loader}, splits[0], args.num_samples, config.seed)
    atomic_write_text(out / "samples.txt", "".join(s + "\n" for s in samples))
    print(f"wrote {out}/: {', '.join(written)}, samples.txt  ({time.perf_counter() - started:.1f} s)")
    return 0


def _heatmap(counts: np.ndarray, tokenizer: data.Tokenizer) -> bytes | None:
    """PNG bytes, or None (with a note) when matplotlib is not installed."""
    try:
        return bigram_heatmap_png(counts, tokenizer.itos)
    except ConfigError as e:
        print(f"note: bigram.png skipped: {e}")
        return None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load(out_dir: str) -> tuple[NgramModel, data.Tokenizer, dict]:
    """The n-gram model, tokenizer and config saved in a run directory."""
    out = Path(out_dir)
    config = read_json(out / "config.json")
    try:
        ngram = NgramConfig(**config["ngram"])
        tokenizer = data.Tokenizer.from_list(config["vocab"])
        expected = config["model_sha256"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{out / 'config.json'} is not a valid n-gram config ({e})") from None
    except TinylmError as e:
        raise CheckpointError(f"{out / 'config.json'}: {e}") from None
    try:
        blob = (out / MODEL_FILE).read_bytes()
    except OSError:
        raise CheckpointError(f"{out / MODEL_FILE} is missing") from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise CheckpointError(f"{out / MODEL_FILE} does not match its checksum: truncated or modified")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        model = NgramModel.from_arrays(ngram, arrays)
    except (ValueError, OSError, ConfigError) as e:
        raise CheckpointError(f"{out / MODEL_FILE} cannot be read: {e}") from None
    if ngram.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{out / 'config.json'}: the model and the vocabulary disagree")
    return model, tokenizer, config


def _samples(model, tokenizer, config, train_lines, n, seed, temperature=1.0, top_k=None, prompt="") -> list[str]:
    """Sample ``n`` items and print them marked new or copied."""
    items = sample_items(model, tokenizer, n, RNG(seed), prompt=prompt, temperature=temperature,
                         top_k=top_k, continuous=config.get("loader") == "stream")
    print_samples(mark_known(items, train_lines))
    return items


def sample(args: argparse.Namespace) -> int:
    model, tokenizer, config = load(args.out_dir)
    train_lines, _, _ = data.load_splits(args.out_dir)
    _samples(model, tokenizer, config, train_lines, args.num_samples, args.seed,
             args.temperature, args.top_k, args.prompt)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    model, tokenizer, config = load(args.out_dir)
    splits = data.load_splits(args.out_dir)
    loader = config.get("loader", "words")
    print(f"order {model.config.order} {model.config.method} model, loader {loader}")
    for name, lines in zip(SPLITS, splits):
        X, Y = data.make_examples(lines, tokenizer, model.context, loader)
        loss = nll(model, X, Y)
        print(f"{name:>5}: loss {loss:.4f}, perplexity {math.exp(loss):.3f}")
    return 0
