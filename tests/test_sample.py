"""Sampling: the coin-flip rule, temperature and top-k, items and streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinylm.data import Tokenizer
from tinylm.errors import ConfigError
from tinylm.rng import RNG
from tinylm.sample import mark_known, pick, probabilities, sample_items, sample_tokens


def reference_pick(probs, coin):
    """The rule as a C loop would write it."""
    cdf = 0.0
    for i, p in enumerate(probs):
        cdf += p
        if coin < cdf:
            return i
    return len(probs) - 1


@given(st.lists(st.floats(0, 10), min_size=1, max_size=30), st.floats(0, 1, exclude_max=True))
def test_pick_is_the_first_index_whose_running_sum_exceeds_the_coin(weights, coin):
    w = np.array(weights, dtype=np.float64)
    if w.sum() == 0:
        w[-1] = 1.0
    probs = w / w.sum()
    expected = reference_pick(probs, coin)
    got = pick(probs, coin)
    if expected == len(probs) - 1 and probs[-1] == 0:
        # rounding left no index: we fall back to the last token that can occur
        assert probs[got] > 0
    else:
        assert got == expected


def test_pick_falls_back_when_rounding_leaves_no_index():
    assert pick(np.array([0.25, 0.25, 0.25, 0.25 - 1e-12]), 0.99999999999999) == 3
    assert pick(np.array([0.5, 0.5 - 1e-12, 0.0]), 0.9999999999999) == 1


def test_probabilities_match_softmax_with_temperature_and_top_k():
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    p = probabilities(logits, temperature=2.0)
    e = np.exp(logits.astype(np.float64) / 2.0)
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-15)
    top2 = probabilities(logits, top_k=2)
    assert top2[0] == 0 and top2[3] == 0
    np.testing.assert_allclose(top2[[1, 2]], np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum())
    with pytest.raises(ConfigError):
        probabilities(logits, temperature=0.0)


class TableModel:
    """A bigram table as a stand-in model: next-token logits from the last id."""

    def __init__(self, table: np.ndarray, context: int = 2) -> None:
        self.table = table
        self.context = context
        self.training = True
        self.calls = []

    def parameters(self):
        return []

    def train(self, mode: bool = True):
        self.training = mode

    def eval(self):
        self.training = False

    def forward(self, idx, targets=None):
        self.calls.append((idx.copy(), self.training))
        return self.table[idx[:, -1]], None


@pytest.fixture
def tok():
    return Tokenizer.from_lines(["abc"])  # "\n" a b c -> 0 1 2 3


def test_items_stop_at_end_of_text_and_restart_from_padding(tok):
    # after "\n" always "a"; after "a" always "b"; after "b" always "\n"
    table = np.full((4, 4), -1e9)
    table[0, 1] = table[1, 2] = table[2, 0] = table[3, 0] = 0.0
    model = TableModel(table)
    assert sample_items(model, tok, 3, RNG(1)) == ["ab", "ab", "ab"]
    assert all(idx.tolist()[0] == [0, 0] for idx, _ in model.calls[::3])  # each item starts padded
    assert all(not training for _, training in model.calls)
    assert model.training  # the mode is restored afterwards


def test_prompt_starts_every_item(tok):
    table = np.full((4, 4), -1e9)
    table[:, 0] = 0.0  # always end
    assert sample_items(TableModel(table), tok, 2, RNG(1), prompt="cab") == ["cab", "cab"]
    with pytest.raises(ConfigError):
        sample_items(TableModel(table), tok, 1, RNG(1), prompt="a\nb")


def test_one_coin_per_token_from_the_rng(tok):
    table = np.zeros((4, 4))  # uniform: token = floor(coin * 4)
    text = sample_tokens(TableModel(table), tok, "\nab", 50, RNG(7))
    coins = RNG(7).rand(50)
    expected = tok.decode([min(int(c * 4), 3) for c in coins])
    assert text == "\nab" + expected


def test_continuous_items_keep_one_tape(tok):
    table = np.zeros((4, 4))
    a = sample_items(TableModel(table), tok, 5, RNG(3), continuous=True)
    stream = sample_tokens(TableModel(table), tok, "", 200, RNG(3))
    assert "\n".join(a) == stream[: len("\n".join(a))]


def test_mark_known():
    assert mark_known(["emily", "zaviel"], ["anna", "emily"]) == [("emily", True), ("zaviel", False)]


def test_a_tiny_temperature_is_greedy_not_nan():
    from tinylm.sample import probabilities

    p = probabilities(np.array([1.0, 3.0, 2.0]), temperature=1e-310)
    assert p.tolist() == [0.0, 1.0, 0.0]
