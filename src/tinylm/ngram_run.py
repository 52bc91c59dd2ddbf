"""A count-based n-gram run, from settings to a finished run directory.

``train`` with no ``order``/``smoothing`` grid-searches order 1..6 and the
additive smoothing {0.01, 0.03, 0.1, 0.3, 1.0} on the validation split,
prints the table, keeps the best model and reports its test loss. Either
flag alone fixes that axis of the grid. ``--method kneser-ney`` searches the
order only (its discounts come from the counts) and also reports how far it
beats the best additive model on the same data. What it finds is said
through a tinylm.output.Output; the command line and the Python API are
shells over this.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tinylm import data, memory, runs, text, tokenizer as tokenizers
from tinylm.output import (
    SILENT, TEXT_PASSAGE, Output, format_loss, format_perplexity, sample_and_save,
    say_loss, write_passage,
)
from tinylm.errors import ConfigError
from tinylm.io import atomic_write_bytes, write_jsonl
from tinylm.ngram import (
    ORDERS, GridPoint, NgramConfig, NgramModel, NgramSettings, best, grid_search,
    grid_search_stream, nll, nll_stream,
)
from tinylm.ngram_plot import bigram_heatmap_png, frequent_bigrams
from tinylm.losses import perplexity
from tinylm.text import bits
from tinylm.train_config import TrainConfig

MODEL_FILE = "model.npz"
SPLITS = data.SPLIT_NAMES


class _Examples(dict):
    """``examples[order][split]`` for the grid search, made when first asked for and only
    the last order's kept: every order at once took 3.6 GB for 2,000,000 lines. Every
    order's examples are made from the same ``items`` (``data.Items``), so each split is
    encoded once for the whole grid."""

    def __init__(self, items3: tuple[data.Items, ...], loader: str) -> None:
        super().__init__()
        self.items3, self.loader = items3, loader

    def __missing__(self, order: int) -> dict:
        self.clear()
        made = {name: data.examples_of(items, order - 1, self.loader)
                for name, items in zip(SPLITS, self.items3)}
        self[order] = made
        return made


# bytes a counted n-gram may take while a table is built (keys, counts, sort temporaries)
NGRAM_BYTES = 32


def _format_grid(points: list[GridPoint]) -> list[str]:
    smoothings = sorted({p.smoothing for p in points}, key=lambda s: (s is None, s))
    orders = sorted({p.order for p in points})
    by_key = {(p.order, p.smoothing): p.val_loss for p in points}
    header = "order " + "".join(f"{'KN' if s is None else f'a={s:g}':>10}" for s in smoothings)
    rows = [header]
    for order in orders:
        rows.append(f"{order:>5} " + "".join(f"{by_key[(order, s)]:>10.4f}" for s in smoothings))
    return rows


def train(out_dir: str | None, num_samples: int, splits, source: str,
          inputs: list[str], search: NgramSettings, config: TrainConfig,
          output: Output = SILENT,
          chosen: tokenizers.TokenizerSettings = tokenizers.TokenizerSettings()) -> Path:
    """Search, fit and save a count model on the tokens of the tokenizer ``chosen``;
    ``splits`` are the run's train/val/test lines (or, for a text, their bytes). Returns the
    run directory."""
    out = runs.check_new_run_dir(out_dir, inputs)
    text_run = config.format == "text"
    tokenizer = tokenizers.build(chosen, splits, text_run, output)
    loader = config.loader
    V = tokenizer.vocab_size
    orders = search.orders
    if search.order is None:  # the default search: the orders this alphabet can count
        orders = tuple(o for o in ORDERS if _countable(o, V))
        if orders != ORDERS:
            left = [str(o) for o in ORDERS if o not in orders]
            output.say(f"note: order{'s' if len(left) > 1 else ''} {', '.join(left)} "
                  f"{'are' if len(left) > 1 else 'is'} left out of the search: {V:,} "
                  f"{tokenizer.unit}s have too many possible n-grams of that length")
    for order in orders:
        NgramConfig(order, V)  # refuse an impossible order before any work
    # every training n-gram of the largest order distinct at worst; Kneser-Ney's lower orders
    # have fewer distinct n-grams each, and hold about as much again in all (measured)
    n = sum(map(len, splits)) if text_run else sum(len(x) + 1 for lines in splits for x in lines)
    tables = 2 if search.method == "kneser-ney" else 1
    memory.check(memory.Estimate({"the n-gram counts": NGRAM_BYTES * n * tables,
                                  "the data": n * (2 if text_run else 8 * max(orders))}),
                 "choose a smaller --order, or a smaller input")
    encoded = text.encode_document(splits, tokenizer, output) if text_run else None
    started = time.perf_counter()
    # the directory is taken now, before the work: an unwritable -o fails at once
    settings = {"kind": "ngram", "model": "ngram", "loader": loader}
    store = runs.RunWriter.create(out, inputs, settings, tokenizer, source, splits, encoded)
    try:
        if encoded is not None:  # from here on the splits are read from the run's tokens.npy
            mapped = text.split_tokens(runs.map_tokens(out), encoded.lengths)
            ratios = encoded.tokens_per_char
            del encoded
            line = _search_and_save_text(store, num_samples, config.seed, mapped, ratios, source,
                                         tokenizer, search, orders, output)
        else:
            line = _search_and_save(store, num_samples, config.seed, splits, source, tokenizer,
                                    search, loader, orders, output)
    finally:
        store.close()
    output.say(f"{line}  ({time.perf_counter() - started:.1f} s)")
    return out


def _countable(order: int, V: int) -> bool:
    try:
        NgramConfig(order, V)
    except ConfigError:
        return False
    return True


def _search_and_save_text(store: runs.RunWriter, num_samples: int, seed: int, tokens3,
                          ratios: list[float], source: str, tokenizer: tokenizers.Tokenizer,
                          search: NgramSettings, orders: tuple[int, ...], output: Output) -> str:
    """The grid search, the chosen model and its files for a text run: every count and every
    loss made from the token arrays a piece at a time (tinylm.ngram's stream functions);
    ``ratios`` each split's tokens per character."""
    V, pad = tokenizer.vocab_size, tokenizer.eot
    train, val, test = tokens3
    output.say(f"data: {source}: {tokenizer.unit}s train {len(train):,} / val {len(val):,} / "
               f"test {len(test):,}; vocabulary {V} {tokenizer.unit}s{tokenizer.note}; format text")
    points = grid_search_stream(train, val, pad, V, orders, search.smoothings, search.method)
    _say_grid(points, search, output)
    chosen = best(points)
    _note_edge(chosen, points, output)
    fitted = NgramConfig(chosen.order, V, search.method, chosen.smoothing or 0.0)
    model = NgramModel(fitted).fit_stream(train, pad)
    test_loss = nll_stream(model, test, pad)
    _say_best(chosen, ratios, tokenizer.unit, output)
    output.say(f"test loss {format_loss(test_loss, None, ratios[2])}, perplexity "
               f"{format_perplexity(test_loss)}")
    final = {"step": 1, "test_loss": test_loss, "test_perplexity": perplexity(test_loss),
             "test_bpc": bits(test_loss, ratios[2])}

    def picture() -> bytes:
        counts, itos = frequent_bigrams(train, pad, tokenizer.itos)
        return bigram_heatmap_png(counts, itos, of=V, title="bigram counts")

    written = _commit(store, fitted, model, chosen, final, points, picture, output, ratios,
                      *tokenizer.files, runs.TOKENS)
    if num_samples:
        write_passage(output, model, tokenizer, TEXT_PASSAGE, seed, store.out / "samples.txt")
        written.append("samples.txt")
    return f"wrote {store.out}/: {', '.join(written)}"


def _commit(store: runs.RunWriter, fitted: NgramConfig, model: NgramModel, chosen: GridPoint,
            final: dict, points: list[GridPoint], picture: Callable[[], bytes],
            output: Output, ratios: list[float], *data_files: str) -> list[str]:
    """Commit the chosen model and its records (``ratios``: each split's tokens per
    character), then write grid.jsonl and bigram.png (drawn by ``picture``; skipped with a
    note without matplotlib); returns the files the run holds, ``data_files`` (the
    tokenizer's, a text's tokens.npy) among them."""
    store.update_settings({"ngram": fitted.to_dict()})
    store.log({"step": 1, "train_loss": chosen.train_loss, "val_loss": chosen.val_loss,
               "train_bpc": bits(chosen.train_loss, ratios[0]),
               "val_bpc": bits(chosen.val_loss, ratios[1])})
    store.log(final)
    store.commit({"step": 1}, model.to_arrays(), MODEL_FILE)
    written = ["manifest.json", "config.json", MODEL_FILE, "metrics.jsonl", "train/val/test.txt",
               *data_files]
    write_jsonl(store.out / "grid.jsonl", [vars(p) for p in points])
    written.append("grid.jsonl")
    try:
        png = picture()
    except ConfigError as e:
        output.say(f"note: bigram.png skipped: {e}")
    else:
        atomic_write_bytes(store.out / "bigram.png", png)
        written.append("bigram.png")
    return written


def _note_edge(chosen: GridPoint, points: list[GridPoint], output: Output) -> None:
    """Say so when the best point lies on the edge of a searched axis: past it may be better."""
    orders = sorted({p.order for p in points})
    smoothings = sorted({p.smoothing for p in points if p.smoothing is not None})
    if len(orders) > 1 and chosen.order == orders[-1]:
        output.say(f"note: the best order is the largest searched ({chosen.order}): a longer one "
                   "may do better (--order N)")
    if len(smoothings) > 1 and chosen.smoothing in (smoothings[0], smoothings[-1]):
        side = "smallest" if chosen.smoothing == smoothings[0] else "largest"
        output.say(f"note: the best smoothing is the {side} searched ({chosen.smoothing:g}): "
                   "one beyond it may do better (--smoothing A)")


def _say_best(chosen: GridPoint, ratios: list[float], unit: str, output: Output) -> None:
    knob = "" if chosen.smoothing is None else f", smoothing {chosen.smoothing:g}"
    output.say(f"best: order {chosen.order}{knob}: train {chosen.train_loss:.4f}, val "
               f"{chosen.val_loss:.4f} nats per {unit} = {bits(chosen.val_loss, ratios[1]):.4f} "
               "bits/char")


def _say_grid(points: list[GridPoint], search: NgramSettings, output: Output) -> None:
    if len(points) > 1:
        label = "Kneser-Ney" if search.method == "kneser-ney" else "additive smoothing"
        output.say(f"grid search, val loss ({label}):")
        for row in _format_grid(points):
            output.say("  " + row)


def _search_and_save(store: runs.RunWriter, num_samples: int, seed: int, splits, source: str,
                     tokenizer: tokenizers.Tokenizer, search: NgramSettings, loader: str,
                     orders: tuple[int, ...], output: Output) -> str:
    V = tokenizer.vocab_size
    output.say(f"data: {source}: {sum(map(len, splits)):,} items -> train {len(splits[0]):,} / "
          f"val {len(splits[1]):,} / test {len(splits[2]):,}; vocabulary {V} {tokenizer.unit}s"
          f"{tokenizer.note}; loader {loader}")
    items3 = tuple(data.Items(lines, tokenizer) for lines in splits)  # each encoded once
    ratios = [items.tokens_per_char for items in items3]
    examples = _Examples(items3, loader)
    points = grid_search(examples, V, orders, search.smoothings, search.method)
    _say_grid(points, search, output)
    chosen = best(points)
    _note_edge(chosen, points, output)
    fitted = NgramConfig(chosen.order, V, search.method, chosen.smoothing or 0.0)
    model = NgramModel(fitted).fit(*examples[chosen.order]["train"])
    test_loss = nll(model, *examples[chosen.order]["test"])
    _say_best(chosen, ratios, tokenizer.unit, output)
    final = {"step": 1, "test_loss": test_loss, "test_perplexity": perplexity(test_loss),
             "test_bpc": bits(test_loss, ratios[2])}
    output.say(f"test loss {format_loss(test_loss, None, ratios[2], perplexity=True)}")
    if search.method == "kneser-ney":
        every = examples if orders == ORDERS else _Examples(items3, loader)
        additive = best(grid_search(every, V, tuple(o for o in ORDERS if _countable(o, V))))
        add_model = NgramModel(NgramConfig(additive.order, V, "additive", additive.smoothing))
        add_test = nll(add_model.fit(*every[additive.order]["train"]), *every[additive.order]["test"])
        final.update({"additive_order": additive.order, "additive_smoothing": additive.smoothing,
                      "additive_test_loss": add_test})
        output.say(f"Kneser-Ney beats the best additive model (order {additive.order}, smoothing "
              f"{additive.smoothing:g}, test {add_test:.4f}) by {add_test - test_loss:.4f} nats "
              f"per {tokenizer.unit}")


    def picture() -> bytes:
        # the items' bigrams, each item's first token after the end token before it: those
        # of the words loader; among the most frequent tokens only, so no V x V matrix
        counts, itos = frequent_bigrams(items3[0].tokens, tokenizer.eot, tokenizer.itos)
        return bigram_heatmap_png(counts, itos, of=V)

    written = _commit(store, fitted, model, chosen, final, points, picture, output, ratios,
                      *tokenizer.files)
    sample_and_save(output, model, tokenizer, num_samples, seed, splits[0], loader == "stream",
                    store.out / "samples.txt")
    written.append("samples.txt")
    return f"wrote {store.out}/: {', '.join(written)}"


def evaluate(run: runs.Run, output: Output = SILENT) -> dict[str, dict]:
    """The loss of a committed n-gram run on each split, ``{split: {"loss", "se"}}``, said
    through ``output`` as ``tinylm eval`` prints it."""
    model, loader = run.model, run.loader
    losses = {}
    if run.format == "text":
        output.say(f"order {model.config.order} {model.config.method} model, format text")
        for name, tokens, characters in zip(SPLITS, run.tokens, run.characters):
            loss, ratio = nll_stream(model, tokens, run.tokenizer.eot), \
                text.tokens_per_char(len(tokens), characters)
            losses[name] = {"loss": loss, "se": None, "bpc": bits(loss, ratio)}
            say_loss(output, name, loss, None, ratio)
        return losses
    output.say(f"order {model.config.order} {model.config.method} model, loader {loader}")
    for name, lines in zip(SPLITS, run.lines3):
        items = data.Items(lines, run.tokenizer)  # encoded once: the examples and the ratio
        loss = nll(model, *data.examples_of(items, model.context, loader))
        ratio = items.tokens_per_char
        losses[name] = {"loss": loss, "se": None, "bpc": bits(loss, ratio)}
        say_loss(output, name, loss, None, ratio, perplexity=True)
    return losses

