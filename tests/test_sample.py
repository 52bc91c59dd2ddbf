"""Sampling: the coin-flip rule, temperature and top-k, items and streams."""

from __future__ import annotations

import contextlib

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

    per_position = False

    def parameters(self):
        return []

    def to_numpy(self, x):
        return np.asarray(x)

    def inference_mode(self):
        return contextlib.nullcontext()

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


# --- sequence models read the tape through a cache ----------------------------------------

SEQUENCE_BACKENDS = ["numpy", "torch", "torch-module"]


def sequence_model(name: str, backend: str, block_size: int, seed: int = 3):
    """A small sequence model with weights far from their initial near-uniform predictions."""
    if backend != "numpy":
        pytest.importorskip("torch")
    from tinylm.models import ModelConfig, build_model

    config = ModelConfig(name, vocab_size=11, block_size=block_size, n_embd=8, n_heads=2,
                         n_layers=2, n_embd2=6)
    state = build_model(config, "numpy", RNG(seed)).state_dict()
    rs = np.random.RandomState(seed)
    state = {k: (v + 0.5 * rs.randn(*v.shape)).astype(np.float32) for k, v in state.items()}
    model = build_model(config, backend, RNG(1))
    model.load_state_dict(state)
    return model.eval()


def as_numpy(logits):
    return logits.detach().numpy() if hasattr(logits, "detach") else logits


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
@pytest.mark.parametrize("name", ["transformer", "rnn", "gru"])
def test_a_cache_gives_the_logits_of_the_whole_prefix(name, backend):
    """Fed a chunk and then one token at a time, a cached model gives at each position
    the logits a forward pass over the whole prefix gives there."""
    from tinylm.layers.base import Cache

    model = sequence_model(name, backend, block_size=9)
    idx = np.random.RandomState(1).randint(0, 11, size=(2, 9))
    whole = as_numpy(model.forward(idx)[0])                        # (2, 9, V)
    cache = Cache()
    pieces = [as_numpy(model.forward(idx[:, :3], cache=cache)[0])]  # the prompt at once
    pieces += [as_numpy(model.forward(idx[:, t:t + 1], cache=cache)[0]) for t in range(3, 9)]
    assert cache.length == 9
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-5)
    if name == "transformer":
        with pytest.raises(ConfigError, match="block size 9"):
            model.forward(idx[:, :1], cache=cache)  # it has no tenth position
    with pytest.raises(ValueError, match="targets or a cache"):
        model.forward(idx, idx, cache=Cache())


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
@pytest.mark.parametrize("name", ["transformer", "rnn", "gru"])
def test_200_tokens_are_the_same_with_and_without_the_cache(name, backend):
    tok = Tokenizer(tuple("\nabcdefghij"))
    model = sequence_model(name, backend, block_size=256)
    cached = sample_tokens(model, tok, "ab", 200, RNG(11))
    uncached = sample_tokens(model, tok, "ab", 200, RNG(11), cache=False)
    assert cached == uncached
    assert len(set(cached)) > 5  # a varied text, not one character repeated


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_a_tape_longer_than_the_block_slides_its_window_with_or_without_the_cache(name):
    """Past the block size every position moves, so the cached reader falls back to a
    forward pass over the window: the items are still the same."""
    tok = Tokenizer(tuple("\nabcdefghij"))
    model = sequence_model(name, "numpy", block_size=4)
    kwargs = dict(continuous=True, temperature=2.0)
    cached = sample_items(model, tok, 6, RNG(5), **kwargs)
    assert sum(len(item) + 1 for item in cached) > 4  # the tape outgrew the block
    assert cached == sample_items(model, tok, 6, RNG(5), cache=False, **kwargs)
    assert sample_items(model, tok, 6, RNG(5)) == sample_items(model, tok, 6, RNG(5), cache=False)
