"""--format text: a document kept as it is, split contiguously, encoded once, read through windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinylm import text
from tinylm.batches import Batches, text_split_for
from tinylm.data import IGNORE, Tokenizer
from tinylm.errors import DataError
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG
from tinylm.train import measure

DOC = ("def f(x):\n\treturn x  \n\n\n    # indented\t\ttabs\n" * 40) + "last line, no end"


def write(tmp_path, data: bytes, name: str = "doc.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_read_text_keeps_every_character_and_normalises_line_ends(tmp_path):
    raw = "\ufeff  lead\tand trail  \r\n\r\nnext\rlast \x1b[1m bold\n"
    got = text.read_text(write(tmp_path, raw.encode("utf-8")))
    assert got == "  lead\tand trail  \n\nnext\nlast \x1b[1m bold\n".encode("utf-8")


@pytest.mark.parametrize("data", [b"abc\xe2\x82\xacde\xffgh", b"abcd\xe2\x82\xac\xe2\x82xyz",
                                  "\u00e9\u20ac\U0001F600abc".encode() + b"\x80", b"\xe2\x82"])
def test_not_utf8_names_the_first_bad_byte_across_pieces(tmp_path, data, monkeypatch):
    monkeypatch.setattr(text, "ENCODE_CHUNK", 5)  # characters split between pieces
    with pytest.raises(UnicodeDecodeError) as real:
        data.decode("utf-8")
    with pytest.raises(DataError, match=f"byte offset {real.value.start}\\)"):
        text.read_text(write(tmp_path, data))


def test_read_text_refuses_a_nul_byte_with_its_line(tmp_path):
    with pytest.raises(DataError, match=r"line 2 contains a NUL byte.*UTF-16"):
        text.read_text(write(tmp_path, b"ok\nbad\x00\n"))


def test_split_is_contiguous_at_line_starts_and_concatenates_back():
    data = DOC.encode()
    train, val, test = map(bytes, text.split_text(data))
    assert train + val + test == data
    assert train.endswith(b"\n") and val.endswith(b"\n")  # cut after a line end
    n = len(DOC)
    assert abs(len(train) - 0.9 * n) < 60 and abs(len(val) - 0.05 * n) < 60


def test_split_of_one_long_line_cuts_at_the_character():
    train, val, test = text.split_text(b"x" * 1000)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    doc = "\u20ac".encode() * 400  # three bytes a character: never cut inside one
    parts = [bytes(p).decode("utf-8") for p in text.split_text(doc)]
    assert "".join(parts) == "\u20ac" * 400 and all(parts)


def test_a_text_too_short_to_split_is_one_line():
    with pytest.raises(DataError, match="has 5 bytes; at least 20"):
        text.split_text(b"short", "s.txt")


def test_given_splits_and_missing_ones_from_the_end_of_train(tmp_path):
    train = write(tmp_path, ("line %d\n" % 1 * 1).encode() * 200, "train.txt")
    test = write(tmp_path, b"the test\ttext\n", "test.txt")
    t, v, te = map(bytes, text.read_text_splits(train, test=test))
    assert te == b"the test\ttext\n"
    assert t + v == train.read_bytes() and len(v) > 0 and v.startswith(b"line")


def test_tokenizer_puts_newline_first_and_tab_after_it():
    tok = text.tokenizer_of(["b\ta", "é\n".encode(), memoryview(b"a")])
    assert tok.itos == ("\n", "\t", "a", "b", "é")


@pytest.mark.parametrize("doc", [DOC, "ünïcødé ∑ and 😀 " * 30])
def test_encode_equals_the_dictionary_lookup_in_chunks(doc, monkeypatch):
    monkeypatch.setattr(text, "ENCODE_CHUNK", 7)  # many chunks, ASCII and not
    tok = text.tokenizer_of([doc])
    seen = []
    ids = text.encode(doc, tok, progress=lambda done, total: seen.append((done, total)))
    assert ids.dtype == np.uint8
    assert ids.tolist() == [tok.stoi[ch] for ch in doc]
    assert seen[-1] == (len(doc), len(doc)) and len(seen) == math.ceil(len(doc) / 7)
    assert tok.decode(ids) == doc
    # from UTF-8 bytes, pieces cutting characters: the same ids, into the start of `out`
    room = np.zeros(len(doc.encode()) + 3, np.uint8)
    again = text.encode(doc.encode(), tok, out=room)
    assert again.tolist() == ids.tolist() and again.base is room


def test_encode_splits_gives_each_split_its_length_in_characters():
    parts = ["ab\u20ac\n", "\U0001F600", "xyz"]
    tok = text.tokenizer_of(parts)
    tokens, lengths = text.encode_splits([p.encode() for p in parts], tok)
    assert lengths == [4, 1, 3] and tok.decode(tokens) == "".join(parts)
    assert [tok.decode(t) for t in text.split_tokens(tokens, lengths)] == parts


def test_token_dtype_by_vocabulary_size():
    assert text.token_dtype(256) == np.uint8
    assert text.token_dtype(257) == np.uint16
    assert text.token_dtype(65537) == np.uint32


def test_encode_refuses_a_character_outside_the_vocabulary():
    with pytest.raises(DataError, match="'z' is not in the vocabulary"):
        text.encode("abz", Tokenizer.from_chars("ab"))


def _slow_context(tokens, i, width, pad=0):
    return [tokens[j] if j >= 0 else pad for j in range(i - width, i)]


def test_fixed_window_examples_are_the_padded_contexts():
    tokens = np.arange(1, 30, dtype=np.uint8)
    split = text.TextSplit("train", tokens, context=4)
    starts = np.array([0, 2, 4, 28])
    X, Y = split.examples(starts)
    assert X.tolist() == [_slow_context(tokens, i, 4) for i in starts]
    assert Y.tolist() == tokens[starts].tolist()
    assert len(split) == 29


def test_sequence_examples_are_windows_shifted_by_one():
    tokens = np.arange(1, 30, dtype=np.uint16)
    split = text.TextSplit("train", tokens, context=0, block_size=5)
    X, Y = split.examples(np.array([0, 24]))
    assert X.tolist() == [[0, 1, 2, 3, 4], [24, 25, 26, 27, 28]]
    assert Y.tolist() == [[1, 2, 3, 4, 5], [25, 26, 27, 28, 29]]
    assert len(split) == 25  # every window of 5 targets


@pytest.mark.parametrize("n, block", [(100, 8), (101, 8), (7, 8), (64, 9), (3, 1)])
def test_exact_units_score_every_target_once_with_half_a_block_of_context(n, block):
    split = text.TextSplit("val", np.zeros(n, np.uint8), 0, block)
    plan = text.units(split, budget=n, seed=1)
    assert plan.exact
    T = min(block, n)
    scored = []
    for end, k in zip(plan.ends, plan.scored):
        window = range(end - T, end)
        for i in window[T - k:]:
            scored.append(i)
            if i >= T:  # past the first window, at least T - ceil(T/2) characters before it
                assert i - window.start >= T - math.ceil(T / 2)
    assert sorted(scored) == list(range(n))


def test_sampled_units_are_fixed_by_the_seed_and_the_split_name():
    split = text.TextSplit("train", np.zeros(10_000, np.uint8), 0, 16)
    a, b = text.units(split, 800, seed=3), text.units(split, 800, seed=3)
    assert not a.exact and len(a) == 100 and (a.ends == b.ends).all()
    assert (a.scored == 8).all() and a.ends.min() >= 16 and a.ends.max() <= 10_000
    other = text.units(text.TextSplit("val", split.tokens, 0, 16), 800, seed=3)
    assert not (other.ends == a.ends).all()


def _model(name: str, vocab: int, seed: int = 1):
    extra = dict(block_size=8, n_embd=8, n_layers=1, n_heads=2) if name != "mlp" else \
        dict(context=3, n_embd=4, n_hidden=16)
    if name == "gru":
        extra = dict(block_size=8, n_embd=8, n_embd2=8)
    config = ModelConfig(model=name, vocab_size=vocab, **extra)
    return build_model(config, "numpy", RNG(seed)), config


def _slow_nll(model, tokens, i, width, per_position):
    """-log p(tokens[i]) from one forward pass over the context the evaluation gives it."""
    x = np.array([_slow_context(tokens, i, width)])
    logits, _ = model.forward(x)
    row = np.asarray(logits, np.float64)[0, -1] if per_position else np.asarray(logits)[0]
    row = row - row.max()
    return float(np.log(np.exp(row).sum()) - row[tokens[i]])


@pytest.mark.parametrize("name", ["mlp", "transformer", "gru"])
def test_an_exact_measure_equals_the_slow_loss_of_every_target(name):
    tokens = RNG(5).random_u32_array(90) % 11
    tokens = tokens.astype(np.uint8)
    model, config = _model(name, 11)
    split = text_split_for("val", tokens, config)
    got = measure(model, split, budget=1000, seed=1)
    assert got.se is None and got.targets == 90
    plan = text.units(split, 1000, 1)
    want = []
    for end, k in zip(plan.ends, plan.scored):
        for i in range(end - k, end):
            # a sequence model reads the window that ends at its unit's end, up to i
            width = i - (end - min(8, 90)) + 1 if split.per_position else config.context
            want.append(_slow_nll(model, tokens, i, width, split.per_position))
    assert got.loss == pytest.approx(np.mean(want), rel=1e-5)


def test_an_estimate_is_the_mean_of_its_units_with_their_standard_error():
    tokens = (RNG(7).random_u32_array(5000) % 11).astype(np.uint8)
    model, config = _model("transformer", 11)
    split = text_split_for("train", tokens, config)
    got = measure(model, split, budget=400, seed=9)
    plan = text.units(split, 400, 9)
    means = []
    for end in plan.ends:
        X, Y = split.windows(np.array([end]), np.array([4]))
        logits, _ = model.forward(X)
        z = np.asarray(logits, np.float64)[0, 4:]
        nll = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1) \
            - z[np.arange(4), Y[0, 4:]]
        means.append(nll.mean())
    assert got.targets == 400 and not math.isnan(got.se)
    assert got.loss == pytest.approx(np.mean(means), rel=1e-6)
    assert got.se == pytest.approx(np.std(means, ddof=1) / math.sqrt(len(means)), rel=1e-6)


def test_a_measure_stops_when_asked_between_chunks(monkeypatch):
    import importlib

    train = importlib.import_module("tinylm.train")  # the module: tinylm.train is the API's function

    monkeypatch.setattr(train, "TEXT_EVAL_POSITIONS", 16)
    tokens = np.zeros(500, np.uint8)
    model, config = _model("transformer", 11)
    asked = []
    with pytest.raises(KeyboardInterrupt):
        measure(model, text_split_for("val", tokens, config), 1000, 1,
                stop=lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3


def test_batches_of_a_text_draw_with_the_run_rng():
    tokens = np.arange(200, dtype=np.uint8) % 50
    split = text.TextSplit("train", tokens, 0, 10)
    X, Y = Batches(split, 4, RNG(3)).next()
    starts = (RNG(3).random_array(4) * len(split)).astype(np.int64)
    assert (Y == np.stack([tokens[s:s + 10] for s in starts])).all()
    assert (X[:, 1:] == Y[:, :-1]).all()


def test_train_split_shorter_than_a_block_is_one_line():
    config = ModelConfig(model="transformer", vocab_size=5, block_size=64)
    with pytest.raises(DataError, match="train split has 10 tokens, fewer than a block of 64"):
        text_split_for("train", np.zeros(10, np.uint8), config)


def test_ignore_marks_the_targets_a_later_unit_does_not_score():
    split = text.TextSplit("val", np.arange(1, 20, dtype=np.uint8), 0, 6)
    X, Y = split.windows(np.array([6, 9]), np.array([6, 3]))
    assert Y.tolist() == [[1, 2, 3, 4, 5, 6], [IGNORE] * 3 + [7, 8, 9]]
    assert X[1].tolist() == [3, 4, 5, 6, 7, 8]
