"""tinylm.data: input validation, the classic split, the tokenizer and both loaders."""

import random
import re

import numpy as np
import pytest

from tinylm import data
from tinylm.errors import ConfigError, DataError


def write(tmp_path, content: bytes, name="in.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- read_lines --------------------------------------------------------------------

def test_bundled_dataset(names_lines):
    assert data.default_dataset().is_file()
    assert len(names_lines) == 32_033
    assert names_lines[:3] == ["emma", "olivia", "ava"]


def test_line_endings_whitespace_bom_and_blank_lines(tmp_path):
    path = write(tmp_path, "\ufeffanna \r\n\r\n  bob\rcarl\n\n\t\n dave".encode("utf-8"))
    assert data.read_lines(path) == ["anna", "bob", "carl", "dave"]


def test_unicode_lines(tmp_path):
    path = write(tmp_path, "zoë\nJosé\n北京\n".encode("utf-8"))
    assert data.read_lines(path) == ["zoë", "José", "北京"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n  \n\r\n\t\n", "no non-blank lines"),
    (b"anna\nbo\x00b\n", "line 2 contains a NUL byte"),
    (b"anna\nb\x07ob\n", "line 2 contains the control character U+0007"),
    (b"anna\n\n\nb\x1bob\n", "line 4 contains the control character U+001B; with --format text"),
    (b"anna\nzo\xe9\n", "not UTF-8: byte 0xe9 at line 2, column 3"),
])
def test_bad_files(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        data.read_lines(path)
    assert str(path) in str(err.value)


def test_whitespace_inside_an_item_is_an_ordinary_character(tmp_path):
    path = write(tmp_path, b"  a\tb \x0bc\x0c  \n\td\n")
    assert data.read_lines(path) == ["a\tb \x0bc", "d"]  # stripped at the ends, as before
    assert data.Tokenizer.from_lines(["a\tb"]).itos == ("\n", "\t", "a", "b")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="not a regular file"):
        data.read_lines(tmp_path / "fifo")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.read_lines(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        data.read_lines(tmp_path)


# --- split_lines -------------------------------------------------------------------

def test_classic_split(names_lines, names_splits):
    train, val, test = names_splits
    assert (len(train), len(val), len(test)) == (30_033, 1_000, 1_000)
    # the definition: shuffle indices with random.Random(seed), test first, then val
    order = list(range(len(names_lines)))
    random.Random(42).shuffle(order)
    assert test == [names_lines[i] for i in order[:1000]]
    assert val == [names_lines[i] for i in order[1000:2000]]
    assert train[0] == names_lines[order[2000]]


def test_split_is_deterministic_and_seeded(names_lines):
    assert data.split_lines(names_lines) == data.split_lines(names_lines, seed=42)
    assert data.split_lines(names_lines, seed=1)[2] != data.split_lines(names_lines)[2]


@pytest.mark.parametrize("n, sizes", [(10, (8, 1, 1)), (25, (21, 2, 2)), (50_000, (48_000, 1000, 1000))])
def test_split_sizes(n, sizes):
    lines = [f"w{i}" for i in range(n)]
    train, val, test = data.split_lines(lines)
    assert (len(train), len(val), len(test)) == sizes
    assert sorted(train + val + test) == sorted(lines)


def test_too_few_lines_to_split():
    with pytest.raises(DataError, match="'x.txt' has 9 non-blank lines; at least 10"):
        data.split_lines(["a"] * 9, source="x.txt")


# --- Tokenizer ---------------------------------------------------------------------

def test_names_vocabulary(names_lines):
    tok = data.Tokenizer.from_lines(names_lines)
    assert tok.vocab_size == 27 and tok.eot == 0
    assert tok.itos[1] == "a" and tok.itos[26] == "z"
    assert tok.stoi == {ch: i for i, ch in enumerate(tok.itos)}


def test_round_trip_any_unicode():
    lines = ["zoë", "北京", "a b"]
    tok = data.Tokenizer.from_lines(lines)
    assert tok.eot == 0
    for line in lines:
        assert tok.decode(tok.encode(line + "\n")) == line + "\n"
    assert data.Tokenizer.from_list(tok.to_list()) == tok


def test_unknown_character_is_a_clear_error():
    tok = data.Tokenizer.from_lines(["abc"])
    with pytest.raises(DataError, match="'z' is not in the vocabulary"):
        tok.encode("az")


# --- loaders -----------------------------------------------------------------------

def test_words_loader_pads_each_item():
    tok = data.Tokenizer.from_lines(["ab", "c"])  # \n=0 a=1 b=2 c=3
    X, Y = data.word_examples(["ab", "c"], tok, 2)
    assert X.tolist() == [[0, 0], [0, 1], [1, 2], [0, 0], [0, 3]]
    assert Y.tolist() == [1, 2, 0, 3, 0]
    assert X.dtype == np.int64


def test_stream_loader_slides_over_joined_text():
    tok = data.Tokenizer.from_lines(["ab", "c"])
    X, Y = data.stream_examples(["ab", "c"], tok, 2)  # stream: a b \n c \n
    assert X.tolist() == [[1, 2], [2, 0], [0, 3]]
    assert Y.tolist() == [0, 3, 0]
    assert data.stream_tokens(["ab", "c"], tok).tolist() == [1, 2, 0, 3, 0]


def test_loaders_on_names(names_splits):
    train = names_splits[0]
    tok = data.Tokenizer.from_lines(train)
    Xw, Yw = data.make_examples(train, tok, 3, "words")
    assert len(Yw) == sum(len(w) + 1 for w in train)
    Xs, Ys = data.make_examples(train, tok, 3, "stream")
    assert len(Ys) == sum(len(w) + 1 for w in train) - 3
    # every example's context and target are consecutive tokens of the stream
    stream = data.stream_tokens(train, tok)
    assert np.array_equal(Xs[100], stream[100:103]) and Ys[100] == stream[103]


def test_context_zero_and_bad_loader():
    tok = data.Tokenizer.from_lines(["ab"])
    X, Y = data.word_examples(["ab"], tok, 0)
    assert X.shape == (3, 0) and Y.tolist() == [1, 2, 0]
    with pytest.raises(ConfigError, match="unknown loader"):
        data.make_examples(["ab"], tok, 1, "bogus")


# --- sequences: a prediction at every position ------------------------------------

def test_word_sequences_pad_inputs_and_ignore_padded_targets():
    tok = data.Tokenizer.from_lines(["ab", "c"])  # \n=0 a=1 b=2 c=3
    X, Y = data.word_sequences(["ab", "c"], tok)  # block size: the longest item + 1
    assert X.tolist() == [[0, 1, 2], [0, 3, 0]]
    assert Y.tolist() == [[1, 2, 0], [3, 0, data.IGNORE]]
    X5, Y5 = data.word_sequences(["ab", "c"], tok, block_size=5)
    assert X5.shape == Y5.shape == (2, 5) and (Y5[:, 3:] == data.IGNORE).all()
    with pytest.raises(DataError, match="an item of 2 characters needs a block size of at least 3"):
        data.word_sequences(["ab", "c"], tok, block_size=2)


def test_stream_sequences_shift_each_window_by_one():
    tok = data.Tokenizer.from_lines(["ab", "c"])
    X, Y = data.stream_sequences(["ab", "c"], tok, 2)  # stream: a b \n c \n
    assert X.tolist() == [[1, 2], [2, 0], [0, 3]]
    assert Y.tolist() == [[2, 0], [0, 3], [3, 0]]
    with pytest.raises(DataError, match="too few for a block size of 5"):
        data.stream_sequences(["ab", "c"], tok, 5)


def test_sequences_predict_what_the_fixed_window_examples_predict(names_splits):
    """Both kinds of model score every character and every end token of an item once, with
    the same preceding token (the bigram's context): the same targets and the same pairs, so
    a bigram's mean loss is the same under either protocol."""
    train = names_splits[0][:3000]
    tok = data.Tokenizer.from_lines(train)
    X, Y = data.word_sequences(train, tok)
    valid = Y != data.IGNORE
    Xw, Yw = data.word_examples(train, tok, 1)
    assert np.array_equal(Y[valid], Yw) and np.array_equal(X[valid], Xw[:, 0])
    counts = np.ones((tok.vocab_size, tok.vocab_size))
    np.add.at(counts, (Xw[:, 0], Yw), 1)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    assert logp[X[valid], Y[valid]].mean() == logp[Xw[:, 0], Yw].mean()
    # the stream windows cover the joined text's next-token pairs as stream_examples does
    Xs, Ys = data.stream_sequences(train, tok, 8)
    Xe, Ye = data.stream_examples(train, tok, 8)
    assert np.array_equal(Ys[:, -1], Ye) and np.array_equal(Xs, Xe)
