"""tinylm.ngram: the reference figure, smoothing maths against a direct computation, Kneser-Ney,
the loss by lookup against the loss from whole probability rows, the sparse tables against
counting by hand, saving (old dense files included), and the token-stream functions against
the same functions on the materialised windows."""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinylm import data
from tinylm.errors import ConfigError
from tinylm.ngram import (
    METHODS, ORDERS, SMOOTHINGS, NgramConfig, NgramModel, best, bigram_counts, bigram_counts_stream,
    context_keys, count_stream, grid_search, grid_search_stream, nll, nll_stream,
)


@pytest.fixture(scope="module")
def stream4(names_splits, names_lines):
    tok = data.Tokenizer.from_lines(names_lines)
    return tok, [data.stream_examples(s, tok, 3) for s in names_splits]


def test_reference_figure(stream4):
    """Order 4, smoothing 0.1, stream protocol: test loss 2.1064, perplexity 8.218."""
    tok, (train, _, test) = stream4
    model = NgramModel(NgramConfig(4, tok.vocab_size, "additive", 0.1)).fit(*train)
    loss = nll(model, *test)
    assert loss == pytest.approx(2.1064, abs=3e-4)
    assert math.exp(loss) == pytest.approx(8.218, abs=1e-3)


def test_additive_matches_direct_counting():
    lines = ["abba", "abab", "baab", "bb"]
    tok = data.Tokenizer.from_lines(lines)
    X, Y = data.word_examples(lines, tok, 2)
    model = NgramModel(NgramConfig(3, tok.vocab_size, "additive", 0.5)).fit(X, Y)
    counts = Counter((tuple(x), int(y)) for x, y in zip(X.tolist(), Y))
    contexts = Counter(tuple(x) for x in X.tolist())
    V = tok.vocab_size
    probe = np.array([[0, 0], [1, 2], [2, 2], [2, 0]])  # the last context never occurs
    p = model.probs(probe)
    for row, ctx in enumerate(map(tuple, probe.tolist())):
        for w in range(V):
            expected = (counts[(ctx, w)] + 0.5) / (contexts[ctx] + 0.5 * V)
            assert p[row, w] == pytest.approx(expected, rel=1e-12)
    assert np.allclose(p[3], 1.0 / V)


def test_unigram_order_one():
    lines = ["aab", "ab"]
    tok = data.Tokenizer.from_lines(lines)
    X, Y = data.word_examples(lines, tok, 0)
    model = NgramModel(NgramConfig(1, tok.vocab_size, "additive", 1.0)).fit(X, Y)
    # tokens: a a b \n a b \n -> counts \n:2 a:3 b:2, plus 1 each, over 7 + 3
    assert model.probs(X[:1])[0] == pytest.approx([3 / 10, 4 / 10, 3 / 10])


def test_kneser_ney_is_a_distribution_and_beats_additive(names_splits, names_lines):
    tok = data.Tokenizer.from_lines(names_lines)
    ex = {o: {n: data.word_examples(s, tok, o - 1) for n, s in zip(("train", "val"), names_splits)}
          for o in (4,)}
    kn = best(grid_search(ex, tok.vocab_size, orders=(4,), method="kneser-ney"))
    add = best(grid_search(ex, tok.vocab_size, orders=(4,)))
    assert kn.val_loss < add.val_loss - 0.02
    model = NgramModel(NgramConfig(4, tok.vocab_size, "kneser-ney")).fit(*ex[4]["train"])
    p = model.probs(ex[4]["val"][0][:500])
    assert np.allclose(p.sum(axis=1), 1.0) and (p > 0).all()


def test_kneser_ney_by_hand():
    """A bigram KN probability worked out from the definition."""
    lines = ["ab", "cb", "ab"]  # bigrams with padding: \na ab b\n  \nc cb b\n  \na ab b\n
    tok = data.Tokenizer.from_lines(lines)  # \n=0 a=1 b=2 c=3
    X, Y = data.word_examples(lines, tok, 1)
    model = NgramModel(NgramConfig(2, 4, "kneser-ney")).fit(X, Y)
    # unigram continuation counts: distinct left contexts of each token
    # \n: {b} -> 1; a: {\n} -> 1; b: {a, c} -> 2; c: {\n} -> 1; total 5, all counts 1 or 2
    D1 = model.discounts[0]
    assert D1 == pytest.approx(3 / (3 + 2 * 1))
    p1 = (np.maximum(np.array([1, 1, 2, 1]) - D1, 0) + D1 * 4 * 0.25) / 5
    D2 = model.discounts[1]
    # context "a": raw counts b:2, one type
    expected = (np.maximum(np.array([0, 0, 2, 0]) - D2, 0) + D2 * 1 * p1) / 2
    assert model.probs(np.array([[1]]))[0] == pytest.approx(expected, rel=1e-12)


def test_grid_picks_lowest_val():
    from tinylm.ngram import GridPoint

    points = [GridPoint(2, "additive", 0.1, 2.0, 2.5), GridPoint(3, "additive", 0.1, 1.5, 2.2),
              GridPoint(4, "additive", 0.3, 1.0, 2.3)]
    assert best(points).order == 3


def test_forward_interface_and_save_round_trip():
    lines = ["abc", "bca", "cab"] * 4
    tok = data.Tokenizer.from_lines(lines)
    X, Y = data.word_examples(lines, tok, 2)
    for method in ("additive", "kneser-ney"):
        config = NgramConfig(3, tok.vocab_size, method, 0.1)
        model = NgramModel(config).fit(X, Y)
        logits, loss = model.forward(X, Y)
        assert logits.shape == (len(X), tok.vocab_size)
        assert loss == pytest.approx(-np.mean(logits[np.arange(len(Y)), Y]))
        again = NgramModel.from_arrays(config, model.to_arrays())
        assert np.array_equal(again.probs(X), model.probs(X))


def test_bigram_count_matrix():
    tok = data.Tokenizer.from_lines(["ab", "b"])
    X, Y = data.word_examples(["ab", "b"], tok, 1)
    counts = bigram_counts(X, Y, tok.vocab_size)
    assert counts.tolist() == [[0, 1, 1], [0, 0, 1], [2, 0, 0]]


def test_context_keys_are_distinct():
    idx = np.array([[0, 1], [1, 0], [26, 26]])
    assert context_keys(idx, 27).tolist() == [1, 27, 27 * 27 - 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(order=0, vocab_size=27), "--order must be"),
    (dict(order=2, vocab_size=27, smoothing=0.0), "--smoothing must be a positive"),
    (dict(order=2, vocab_size=27, method="bogus"), "unknown smoothing method"),
    (dict(order=12, vocab_size=10_000), "choose a smaller --order"),
    # an n-gram key must fit in int64: V ** order < 2 ** 63
    (dict(order=6, vocab_size=1536), "order 6 with a vocabulary of 1536 characters has too many"),
    (dict(order=63, vocab_size=2), "choose a smaller --order"),
    (dict(order=10**9, vocab_size=27), "choose a smaller --order"),  # refused without computing 27 ** 1e9
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NgramConfig(**kwargs)


@pytest.mark.parametrize("order, vocab_size", [(5, 1536), (62, 2), (13, 27), (10**6, 1)])
def test_largest_configs_allowed(order, vocab_size):
    assert vocab_size ** order < 2**63
    NgramConfig(order, vocab_size)


# --- the loss by lookup against whole probability rows ------------------------------------


def rows_nll(model, idx, targets, chunk=65536):
    """The loss as it was computed before lookups: a whole row of V probabilities per example,
    one column kept; the formulas written out again here, row sums taken from the rows."""
    V = model.config.vocab_size
    total = 0.0
    for start in range(0, len(targets), chunk):
        x, y = idx[start : start + chunk], targets[start : start + chunk]
        if model.config.method == "additive":
            a, table = model.config.smoothing, model.tables[0]
            rows, found = table.lookup(x)
            counts = np.where(found[:, None], table.dense(rows), 0.0)
            p = (counts + a) / (counts.sum(axis=1, keepdims=True) + a * V)
        else:
            p = np.full((len(x), V), 1.0 / V)
            for k, (table, D) in enumerate(zip(model.tables, model.discounts)):
                rows, found = table.lookup(x[:, x.shape[1] - k :])
                counts = table.dense(rows)
                row_total = counts.sum(axis=1, keepdims=True)
                types = (counts > 0).sum(axis=1, keepdims=True)
                safe_total = np.where(row_total > 0, row_total, 1.0)
                mixed = (np.maximum(counts - D, 0.0) + D * types * p) / safe_total
                p = np.where(found[:, None] & (row_total > 0), mixed, p)
        total += -np.log(p[np.arange(len(p)), y]).sum()
    return float(total / len(targets))


def random_split(rng, n, context, vocab_size):
    """Random (contexts, targets) with a skewed token distribution, so counts repeat."""
    weights = rng.dirichlet(np.full(vocab_size, 0.3))
    tokens = rng.choice(vocab_size, size=(n, context + 1), p=weights)
    return tokens[:, :context], tokens[:, context]


@pytest.mark.parametrize("method", ["additive", "kneser-ney"])
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_nll_is_minus_log_of_the_probs_row(method, order):
    """On random data, the looked-up probability of each target is that column of ``probs``,
    for contexts seen in training and not, and ``nll`` is the rows' loss."""
    rng = np.random.default_rng(order)
    V = 7
    X, Y = random_split(rng, 400, order - 1, V - 1)  # the last token never occurs in training
    Xe, Ye = random_split(rng, 300, order - 1, V)
    Xe[:150] = X[:150]  # contexts seen in training (with other targets, some never seen after them)
    Xe[150:170, -1:] = V - 1  # contexts certainly unseen (if there is a context at all)
    model = NgramModel(NgramConfig(order, V, method, 0.3)).fit(X, Y)
    seen = np.isin(context_keys(Xe, V), context_keys(X, V))
    if order > 1:
        assert 0 < seen.sum() < len(seen)
    rows = model.probs(Xe)
    assert np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.allclose(model.target_probs(Xe, Ye), rows[np.arange(len(Ye)), Ye], rtol=1e-12, atol=0)
    expected = -np.mean(np.log(rows[np.arange(len(Ye)), Ye]))
    assert nll(model, Xe, Ye) == pytest.approx(expected, rel=1e-12, abs=0)
    assert nll(model, Xe, Ye) == pytest.approx(rows_nll(model, Xe, Ye), rel=1e-12, abs=0)
    # a chunk smaller than the split sums in blocks, to the same loss
    assert nll(model, Xe, Ye, chunk=64) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.fixture(scope="module")
def names_examples(names_splits, names_lines):
    tok = data.Tokenizer.from_lines(names_lines)
    return tok.vocab_size, {o: {n: data.word_examples(s, tok, o - 1)
                                for n, s in zip(("train", "val", "test"), names_splits)} for o in ORDERS}


def fitted(V, method, point, ex):
    """The model of a grid point, counted again from its training examples."""
    return NgramModel(NgramConfig(point.order, V, method, point.smoothing or 0.0)).fit(*ex[point.order]["train"])


@pytest.mark.parametrize("method, orders", [("additive", ORDERS), ("kneser-ney", (1, 2, 3, 4))])
def test_grid_equals_the_rows_loss_on_names(names_examples, method, orders):
    """Every figure of the default grid on the bundled names, and the chosen model's test loss,
    is the whole-rows loss to 1e-12 (Kneser-Ney's orders 5 and 6 in the slow test below)."""
    V, ex = names_examples
    points = grid_search(ex, V, orders, method=method)
    assert [(p.order, p.smoothing) for p in points] == (
        [(o, a) for o in orders for a in SMOOTHINGS] if method == "additive" else [(o, None) for o in orders])
    for point in points:
        model = fitted(V, method, point, ex)
        assert point.train_loss == pytest.approx(rows_nll(model, *ex[point.order]["train"]), rel=1e-12, abs=0)
        assert point.val_loss == pytest.approx(rows_nll(model, *ex[point.order]["val"]), rel=1e-12, abs=0)
    chosen = best(points)
    model = fitted(V, method, chosen, ex)
    test = ex[chosen.order]["test"]
    assert nll(model, *test) == pytest.approx(rows_nll(model, *test), rel=1e-12, abs=0)


@pytest.mark.slow
def test_kneser_ney_high_orders_equal_the_rows_loss_on_names(names_examples):
    V, ex = names_examples
    for point in grid_search(ex, V, (5, 6), method="kneser-ney"):
        model = fitted(V, "kneser-ney", point, ex)
        assert point.train_loss == pytest.approx(rows_nll(model, *ex[point.order]["train"]), rel=1e-12, abs=0)
        assert point.val_loss == pytest.approx(rows_nll(model, *ex[point.order]["val"]), rel=1e-12, abs=0)


def test_grid_looks_up_once_per_order_and_split(monkeypatch):
    """The lookups do not depend on the smoothing: 3 orders x 5 smoothings x 2 splits take 6."""
    calls = []
    original = NgramModel.context_counts

    def counting(self, idx, targets=None):
        calls.append((self.config.order, len(idx)))
        return original(self, idx, targets)

    monkeypatch.setattr(NgramModel, "context_counts", counting)
    rng = np.random.default_rng(0)
    ex = {o: {"train": random_split(rng, 300, o - 1, 5), "val": random_split(rng, 100, o - 1, 5)}
          for o in (1, 2, 3)}
    points = grid_search(ex, 5, (1, 2, 3))
    assert len(points) == 15
    assert sorted(calls) == [(1, 100), (1, 300), (2, 100), (2, 300), (3, 100), (3, 300)]


def test_bad_targets_and_empty_data_are_refused():
    X, Y = np.array([[0], [1]]), np.array([1, 2])
    model = NgramModel(NgramConfig(2, 3, "additive", 0.1)).fit(X, Y)
    with pytest.raises(ConfigError, match="targets must be token ids"):
        nll(model, X, np.array([1, 3]))
    with pytest.raises(ConfigError, match="2 contexts need 2 targets"):
        nll(model, X, np.array([1]))
    with pytest.raises(ConfigError, match="empty split"):
        nll(model, X[:0], Y[:0])
    with pytest.raises(ConfigError, match="no examples"):
        NgramModel(NgramConfig(2, 3, "kneser-ney")).fit(X[:0], Y[:0])
    arrays = {**model.to_arrays(), "keys_0": np.zeros(0, np.int64), "counts_0": np.zeros((0, 3))}
    with pytest.raises(ConfigError, match="empty count table"):
        NgramModel.from_arrays(model.config, arrays)


# --- the sparse tables against counting by hand -------------------------------------------


def reference_tables(X, Y, method):
    """Per table, {context tuple: Counter of next tokens}, counted the obvious way: the raw
    (context, target) counts, and for Kneser-Ney's lower orders, for each suffix, how many
    distinct tokens preceded it among the distinct longer n-grams."""
    grams = [tuple(x) + (int(y),) for x, y in zip(X.tolist(), Y)]
    n = X.shape[1] + 1
    if method == "additive":
        orders = [n]
    else:
        orders = range(1, n + 1)
    tables = []
    for m in orders:  # the table of m-grams: m - 1 context tokens
        if m == n:
            suffixes = grams
        else:  # one per distinct (m + 1)-gram suffix
            suffixes = [g[1:] for g in {g[n - m - 1 :] for g in grams}]
        table = {}
        for g in suffixes:
            table.setdefault(g[:-1], Counter())[g[-1]] += 1
        tables.append(table)
    return tables


def key_of(tokens, V):
    """The tokens as the digits of a base-V number."""
    return sum(t * V ** (len(tokens) - 1 - i) for i, t in enumerate(tokens))


def dense_rows(expected, V):
    """The contexts of a reference table in key order (= tuple order: the same number of digits),
    and their counts as dense rows (K, V)."""
    contexts = sorted(expected)
    dense = np.zeros((len(contexts), V))
    for row, h in enumerate(contexts):
        for w, c in expected[h].items():
            dense[row, w] = c
    return contexts, dense


def assert_table_is(table, expected, V):
    """``table`` (a CountTable) holds exactly the counts of ``expected`` (from reference_tables)."""
    contexts, dense = dense_rows(expected, V)
    assert table.keys.tolist() == [key_of(h, V) for h in contexts]
    assert np.array_equal(table.dense(np.arange(len(contexts))), dense)
    assert table.totals.tolist() == dense.sum(axis=1).tolist()
    assert table.types.tolist() == (dense > 0).sum(axis=1).tolist()
    assert len(table.pairs) == int((dense > 0).sum())  # nothing stored for the pairs not seen


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_tables_hold_the_counts_counted_by_hand(method, order):
    rng = np.random.default_rng(10 + order)
    V = 6
    X, Y = random_split(rng, 500, order - 1, V)
    model = NgramModel(NgramConfig(order, V, method, 0.1)).fit(X, Y)
    expected = reference_tables(X, Y, method)
    assert len(model.tables) == len(expected)
    for table, counts in zip(model.tables, expected):
        assert_table_is(table, counts, V)
    if method == "kneser-ney":  # D = n1 / (n1 + 2 n2) from each table's count-of-counts
        for D, counts in zip(model.discounts, expected):
            values = Counter(c for row in counts.values() for c in row.values())
            assert D == (values[1] / (values[1] + 2 * values[2]) if values[1] else 0.5)


def test_a_large_alphabet_stores_only_the_pairs_seen():
    """5,001 characters, order 3: a dense table would be (contexts x 5,001) float64, ~4 GB
    for these 100,000 tokens; the sparse one holds the pairs seen, and its rows and
    looked-up targets are those of the counts."""
    rng = np.random.default_rng(5)
    V, N = 5001, 100_000
    tokens = rng.zipf(1.3, size=N) % V
    X, Y = windows_of(tokens, 0, 3)
    model = NgramModel(NgramConfig(3, V, "kneser-ney")).fit(X, Y)
    stored = sum(a.nbytes for a in model.to_arrays().values())
    assert stored < 3 * 3 * 8 * N  # per table at most N contexts and N pairs, 3 int64 arrays
    assert len(model.tables[-1].keys) * V * 8 > 1e9  # what the dense table would have taken
    pairs = Counter((tuple(x), int(y)) for x, y in zip(X.tolist(), Y))
    top = model.tables[-1]
    rows, found = top.lookup(X[:50])
    assert found.all()
    dense = top.dense(rows)  # (50, V)
    for i, x in enumerate(X[:50].tolist()):
        assert {w: dense[i, w] for w in np.flatnonzero(dense[i])} == {
            y: c for (h, y), c in pairs.items() if h == tuple(x)}
    looked_up = top.context_counts(X[:2000], Y[:2000])  # (2000,) one target per context
    assert looked_up.count.tolist() == [pairs[(tuple(x), int(y))] for x, y in zip(X[:2000].tolist(), Y[:2000])]
    p = model.probs(X[:3])  # (3, V)
    assert np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(p[np.arange(3), Y[:3]], model.target_probs(X[:3], Y[:3]))


# --- saving: the sparse arrays, the old dense ones, and damaged ones -----------------------


@pytest.mark.parametrize("method", METHODS)
def test_old_dense_files_still_open(method):
    """A model saved as dense (K, V) rows reads back into the same sparse tables and numbers."""
    rng = np.random.default_rng(3)
    V, order = 5, 3
    X, Y = random_split(rng, 400, order - 1, V)
    config = NgramConfig(order, V, method, 0.3)
    model = NgramModel(config).fit(X, Y)
    arrays = {"discounts": np.array(model.discounts, dtype=np.float64)}
    for k, counts in enumerate(reference_tables(X, Y, method)):  # written out from plain counting
        contexts, dense = dense_rows(counts, V)
        arrays[f"keys_{k}"] = np.array([key_of(h, V) for h in contexts], dtype=np.int64)
        arrays[f"counts_{k}"] = dense  # (K, V) float64, as runs saved it before
    again = NgramModel.from_arrays(config, arrays)
    for old, new in zip(again.tables, model.tables):
        assert np.array_equal(old.keys, new.keys) and np.array_equal(old.pairs, new.pairs)
        assert np.array_equal(old.pair_counts, new.pair_counts)
    Xe, Ye = random_split(rng, 300, order - 1, V)
    assert nll(again, Xe, Ye) == nll(model, Xe, Ye)
    assert np.array_equal(again.probs(Xe), model.probs(Xe))


def test_saved_arrays_are_plain_int64_and_float64():
    X, Y = random_split(np.random.default_rng(0), 200, 2, 4)
    arrays = NgramModel(NgramConfig(3, 4, "kneser-ney")).fit(X, Y).to_arrays()
    assert {a.dtype for name, a in arrays.items() if name != "discounts"} == {np.dtype(np.int64)}
    assert arrays["discounts"].dtype == np.float64
    assert sorted(arrays) == sorted(["discounts"] + [f"{a}_{k}" for a in ("keys", "pairs", "pair_counts")
                                                      for k in range(3)])


def damaged(arrays, **changes):
    out = dict(arrays)
    for name, value in changes.items():
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("change, message", [
    (dict(pairs_1=None), "lacks the array 'pairs_1'"),
    (dict(discounts=None), "lacks the array 'discounts'"),
    (dict(keys_0=np.zeros(0, np.int64)), "empty count table"),
    (dict(keys_2=lambda a: a[::-1].copy()), "not sorted distinct contexts"),
    (dict(keys_2=lambda a: a + 1000), "not sorted distinct contexts"),
    (dict(keys_1=lambda a: a.astype(np.float64)), "should be 1-D whole numbers, got float64"),
    (dict(pairs_2=lambda a: a[::-1].copy()), "not sorted distinct pairs"),
    (dict(pairs_2=lambda a: a + 10**6), "not sorted distinct pairs"),
    (dict(pairs_2=lambda a: a[:, None]), "should be 1-D whole numbers"),
    (dict(pair_counts_2=lambda a: a[:-1]), "pairs but"),
    (dict(pair_counts_0=lambda a: a - a), "must be whole numbers >= 1"),
    (dict(pair_counts_0=lambda a: a.astype(np.uint64) + np.uint64(2**63)), "must be whole numbers >= 1"),
    (dict(pair_counts_1=lambda a: a.astype(np.float64)), "whole numbers"),
    (dict(discounts=lambda a: a[:2]), "needs 3 discounts"),
    (dict(discounts=lambda a: np.full(3, np.nan)), "between 0 and 1"),
    (dict(discounts=lambda a: np.array(["x", "y", "z"])), "should be 1-D numbers"),
])
def test_damaged_arrays_are_config_errors(change, message):
    X, Y = random_split(np.random.default_rng(0), 300, 2, 4)
    model = NgramModel(NgramConfig(3, 4, "kneser-ney")).fit(X, Y)
    arrays = model.to_arrays()
    change = {name: (value(arrays[name]) if callable(value) else value) for name, value in change.items()}
    with pytest.raises(ConfigError, match=message):
        NgramModel.from_arrays(model.config, damaged(arrays, **change))


@pytest.mark.parametrize("counts, message", [
    (lambda c: c[:, :-1], "do not match the vocabulary"),
    (lambda c: c - 1.0, "must be whole numbers >= 0"),
    (lambda c: c + 0.5, "must be whole numbers >= 0"),
    (lambda c: np.where(c > 0, np.nan, c), "must be whole numbers >= 0"),
    (lambda c: c * 1e300, "must be whole numbers >= 0"),  # finite, but no count is that large
])
def test_damaged_dense_arrays_are_config_errors(counts, message):
    X, Y = random_split(np.random.default_rng(1), 300, 1, 4)
    model = NgramModel(NgramConfig(2, 4, "additive", 0.1)).fit(X, Y)
    table = model.tables[0]
    arrays = {"discounts": np.zeros(0), "keys_0": table.keys,
              "counts_0": counts(table.dense(np.arange(len(table.keys))))}
    with pytest.raises(ConfigError, match=message):
        NgramModel.from_arrays(model.config, arrays)


# --- token streams against the materialised windows ----------------------------------------


def windows_of(tokens, pad, order):
    """(X, Y): each token of the stream a target, its context the order - 1 tokens before it,
    those before the start ``pad``; built one example at a time, the obvious way."""
    tokens = [int(t) for t in tokens]
    X = [[tokens[i - order + 1 + j] if i - order + 1 + j >= 0 else pad for j in range(order - 1)]
         for i in range(len(tokens))]
    return np.array(X, dtype=np.int64).reshape(len(tokens), order - 1), np.array(tokens, dtype=np.int64)


def random_stream(rng, n, vocab_size, dtype=np.int64):
    """A skewed random stream, so n-grams repeat (and some tokens never occur)."""
    weights = rng.dirichlet(np.full(vocab_size, 0.3))
    return rng.choice(vocab_size, size=n, p=weights).astype(dtype)


def assert_same_model(a, b):
    assert len(a.tables) == len(b.tables)
    for s, t in zip(a.tables, b.tables):
        for name in ("keys", "pairs", "pair_counts", "totals", "types"):
            assert np.array_equal(getattr(s, name), getattr(t, name)), name
    assert a.discounts == b.discounts


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_fit_stream_is_fit_on_the_padded_windows(draw):
    V = draw.draw(st.integers(1, 7), "V")
    order = draw.draw(st.integers(1, 5), "order")
    method = draw.draw(st.sampled_from(METHODS), "method")
    n = draw.draw(st.integers(1, 400), "n")
    chunk = draw.draw(st.integers(1, 80), "chunk")
    pad = draw.draw(st.integers(0, V - 1), "pad")
    dtype = draw.draw(st.sampled_from([np.uint8, np.uint16, np.uint32, np.int64]), "dtype")
    tokens = random_stream(np.random.default_rng(draw.draw(st.integers(0, 2**32 - 1), "seed")), n, V, dtype)
    config = NgramConfig(order, V, method, 0.1)
    streamed = NgramModel(config).fit_stream(tokens, pad, chunk=chunk)
    X, Y = windows_of(tokens, pad, order)
    assert_same_model(streamed, NgramModel(config).fit(X, Y))


@pytest.mark.parametrize("order", [1, 2, 4])
def test_count_stream_counts_every_padded_ngram(order):
    rng = np.random.default_rng(order)
    tokens = random_stream(rng, 3000, 5, np.uint16)
    X, Y = windows_of(tokens, 4, order)
    expected = Counter(tuple(x) + (int(y),) for x, y in zip(X.tolist(), Y))
    for chunk in (1, 7, 256, 1 << 20):  # many merges, a few, none
        keys, counts = count_stream(tokens, 4, order, 5, chunk)
        grams = [tuple(int(k) // 5**(order - 1 - j) % 5 for j in range(order)) for k in keys]
        assert keys.tolist() == sorted(keys.tolist()) and len(set(grams)) == len(grams)
        assert dict(zip(grams, counts.tolist())) == expected


def test_fit_stream_reads_a_read_only_memmap(tmp_path):
    tokens = random_stream(np.random.default_rng(2), 5000, 9, np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    mapped = np.memmap(tmp_path / "tokens.bin", dtype=np.uint16, mode="r")
    for method in METHODS:
        config = NgramConfig(4, 9, method, 0.1)
        streamed = NgramModel(config).fit_stream(mapped, 3, chunk=1000)
        assert_same_model(streamed, NgramModel(config).fit(*windows_of(tokens, 3, 4)))
        assert nll_stream(streamed, mapped, 3, chunk=999) == nll(streamed, *windows_of(tokens, 3, 4), chunk=999)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_nll_stream_is_nll_on_the_windows_to_the_bit(method, order):
    rng = np.random.default_rng(20 + order)
    V = 8
    train = random_stream(rng, 3000, V - 1, np.uint8)  # the last token never occurs in training
    val = random_stream(rng, 140_000, V, np.uint8)  # more than two blocks of 65,536
    model = NgramModel(NgramConfig(order, V, method, 0.3)).fit_stream(train, 0, chunk=1000)
    X, Y = windows_of(val, 0, order)
    assert nll_stream(model, val, 0) == nll(model, X, Y)
    assert nll_stream(model, val, 0, chunk=1000) == nll(model, X, Y, chunk=1000)
    assert nll_stream(model, val, 0) == pytest.approx(rows_nll(model, X, Y), rel=1e-12, abs=0)


@pytest.mark.parametrize("method", METHODS)
def test_grid_search_stream_is_grid_search_on_the_windows(method):
    rng = np.random.default_rng(7)
    V, pad = 6, 2
    train, val = random_stream(rng, 70_000, V, np.uint16), random_stream(rng, 5000, V, np.uint16)
    orders = (1, 2, 3, 4)
    examples = {o: {"train": windows_of(train, pad, o), "val": windows_of(val, pad, o)} for o in orders}
    expected = grid_search(examples, V, orders, method=method)
    assert grid_search_stream(train, val, pad, V, orders, method=method, chunk=4096) == expected
    assert grid_search_stream(train, val, pad, V, orders, (0.3,), method) == [
        p for p in expected if p.smoothing in (0.3, None)]


def test_grid_search_stream_on_the_names_stream(names_splits, names_lines):
    """The bundled names as one stream each for train and val, pad = end of text: the
    default grid's figures equal the search on the materialised windows."""
    tok = data.Tokenizer.from_lines(names_lines)
    train, val = (data.stream_tokens(s, tok) for s in names_splits[:2])
    examples = {o: {"train": windows_of(train, tok.eot, o), "val": windows_of(val, tok.eot, o)}
                for o in ORDERS}
    for method, orders in (("additive", ORDERS), ("kneser-ney", (1, 3, 5))):
        assert (grid_search_stream(train.astype(np.uint8), val, tok.eot, tok.vocab_size, orders,
                                   method=method, chunk=50_000)
                == grid_search(examples, tok.vocab_size, orders, method=method))


def test_bigram_counts_stream_is_bigram_counts_on_the_windows():
    rng = np.random.default_rng(4)
    tokens = random_stream(rng, 20_000, 11, np.uint32)
    X, Y = windows_of(tokens, 5, 2)
    assert np.array_equal(bigram_counts_stream(tokens, 5, 11, chunk=333), bigram_counts(X, Y, 11))
    assert bigram_counts_stream(np.array([1, 0, 1], np.uint8), 0, 2).tolist() == [[0, 2], [1, 0]]


@pytest.mark.parametrize("tokens, pad, message", [
    (np.zeros((3, 2), np.int64), 0, "1-D array of integer token ids"),
    (np.zeros(3), 0, "1-D array of integer token ids"),
    (np.array(3), 0, "1-D array of integer token ids"),
    ([0, 1, 2], 0, "1-D array of integer token ids"),
    (np.array([0, 1, 5]), 0, r"token ids in 0\.\.4"),
    (np.array([0, 1, -1]), 0, r"token ids in 0\.\.4"),
    (np.array([0, 1, 2]), 5, r"padding token must be a token id in 0\.\.4"),
])
def test_bad_streams_are_refused(tokens, pad, message):
    model = NgramModel(NgramConfig(3, 5, "kneser-ney"))
    with pytest.raises(ConfigError, match=message):
        model.fit_stream(tokens, pad)
    fitted = NgramModel(NgramConfig(3, 5, "kneser-ney")).fit_stream(np.array([0, 1, 2, 3, 4]), 0)
    with pytest.raises(ConfigError, match=message):
        nll_stream(fitted, tokens, pad)
    with pytest.raises(ConfigError, match=message):
        bigram_counts_stream(tokens, pad, 5)


def test_empty_streams_are_refused():
    with pytest.raises(ConfigError, match="no examples"):
        NgramModel(NgramConfig(2, 3, "additive", 0.1)).fit_stream(np.zeros(0, np.uint8), 0)
    model = NgramModel(NgramConfig(2, 3, "additive", 0.1)).fit_stream(np.array([0, 1, 2]), 0)
    with pytest.raises(ConfigError, match="empty split"):
        nll_stream(model, np.zeros(0, np.uint8), 0)
    with pytest.raises(ConfigError, match="chunk must be"):
        nll_stream(model, np.array([0, 1]), 0, chunk=0)
