"""tinylm.ngram: the reference figure, smoothing maths against a direct computation, Kneser-Ney,
and the loss by lookup against the loss from whole probability rows."""

import math
from collections import Counter

import numpy as np
import pytest

from tinylm import data
from tinylm.errors import ConfigError
from tinylm.ngram import (
    ORDERS, SMOOTHINGS, NgramConfig, NgramModel, best, bigram_counts, context_keys, distinct_rows,
    grid_search, nll,
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


@pytest.mark.parametrize("shape", [(0, 3), (1, 2), (500, 1), (2000, 2), (2000, 5)])
def test_distinct_rows_is_numpys_unique_rows(shape):
    rng = np.random.default_rng(shape[0])
    a = rng.integers(0, 4, size=shape)
    assert np.array_equal(distinct_rows(a), np.unique(a, axis=0))


def test_context_keys_are_distinct():
    idx = np.array([[0, 1], [1, 0], [26, 26]])
    assert context_keys(idx, 27).tolist() == [1, 27, 27 * 27 - 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(order=0, vocab_size=27), "--order must be"),
    (dict(order=2, vocab_size=27, smoothing=0.0), "--smoothing must be a positive"),
    (dict(order=2, vocab_size=27, method="bogus"), "unknown smoothing method"),
    (dict(order=12, vocab_size=10_000), "choose a smaller --order"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NgramConfig(**kwargs)


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
            rows, found = table.lookup(x, V)
            counts = np.where(found[:, None], table.counts[rows], 0.0)
            p = (counts + a) / (counts.sum(axis=1, keepdims=True) + a * V)
        else:
            p = np.full((len(x), V), 1.0 / V)
            for k, (table, D) in enumerate(zip(model.tables, model.discounts)):
                rows, found = table.lookup(x[:, x.shape[1] - k :], V)
                counts = table.counts[rows]
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
