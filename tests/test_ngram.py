"""tinylm.ngram: the reference figure, smoothing maths against a direct computation, Kneser-Ney."""

import math
from collections import Counter

import numpy as np
import pytest

from tinylm import data
from tinylm.errors import ConfigError
from tinylm.ngram import (
    NgramConfig, NgramModel, best, bigram_counts, context_keys, grid_search, nll,
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
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NgramConfig(**kwargs)
