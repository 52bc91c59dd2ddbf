"""tinylm.bpe: the fast trainer and encoder against a slow, obvious reference written
here, merge for merge; the rules (ties, overlaps, splits, stopping); decoding any ids;
the JSON format and its refusals; the ``tinylm bpe`` commands."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinylm import bpe, bpe_merge, data
from tinylm.cli import main
from tinylm.errors import ConfigError, DataError, TinylmError

# --- the reference -------------------------------------------------------------------

def chunks_of(text: str | bytes, split: str) -> list[bytes]:
    """The pieces training keeps apart: the whole text, or the GPT-4 pattern's matches."""
    if split == "none":
        return [text if isinstance(text, bytes) else text.encode("utf-8")]
    regex = pytest.importorskip("regex")  # a test extra; only the gpt4 split needs it
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [m.encode("utf-8") for m in regex.findall(bpe.GPT4_PATTERN, text)]


def replace(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Left to right, without overlap."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_train(text: str | bytes, vocab_size: int, split: str = "none"
                    ) -> tuple[list[tuple[int, int]], list[int]]:
    """Every step: count all adjacent pairs in every chunk, merge the most frequent
    (smallest pair on ties) everywhere; stop at vocab_size or when no pair is left.
    The merges, and the final ids of all chunks in order."""
    seqs = [list(chunk) for chunk in chunks_of(text, split)]
    merges: list[tuple[int, int]] = []
    while 256 + len(merges) < vocab_size:
        counts: Counter = Counter()
        for ids in seqs:
            counts.update(zip(ids, ids[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        seqs = [replace(ids, best, 256 + len(merges)) for ids in seqs]
        merges.append(best)
    return merges, [i for ids in seqs for i in ids]


def reference_encode(text: str | bytes, merges, split: str = "none") -> list[int]:
    seqs = [list(chunk) for chunk in chunks_of(text, split)]
    for i, pair in enumerate(merges):
        seqs = [replace(ids, pair, 256 + i) for ids in seqs]
    return [i for ids in seqs for i in ids]


def agrees(text: str | bytes, vocab_size: int, split: str) -> bpe.BPE:
    """Train both ways; the merges, the final sequence and the encoding must be equal."""
    merges, final = reference_train(text, vocab_size, split)
    tokenizer, ids = bpe.train_sequence(text, vocab_size, split)
    assert tokenizer.merges == merges
    assert ids.tolist() == final
    assert tokenizer.encode(text).tolist() == final
    return tokenizer


SPLITS = pytest.mark.parametrize("split", bpe.SPLITS)

# a character from every Unicode plane, 0 to 16 (valid scalar values, no surrogates)
PLANES = ["é", "😀", "\U00020000", "\U00030000", *(chr(p << 16 | 0x1234) for p in range(4, 14)),
          "\U000E0001", "\U000F0000", "\U00100000"]
PLANE_TEXT = "".join(f"{ch}{ch}{ch} a{ch} {ch}b, " for ch in PLANES) * 3 + "".join(PLANES)

runs = st.lists(st.tuples(st.sampled_from("ab c\n\x00é"), st.integers(1, 6)), max_size=12).map(
    lambda parts: "".join(ch * n for ch, n in parts))
small_alphabet = st.one_of(runs, st.text(alphabet="ab", max_size=30),
                           st.text(alphabet="abc \n\x00", max_size=40),
                           st.text(alphabet="a😀 ", max_size=20))


# --- against the reference ----------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(text=small_alphabet, extra=st.integers(0, 40), split=st.sampled_from(bpe.SPLITS))
def test_random_texts_over_small_alphabets_equal_the_reference(text, extra, split):
    agrees(text, 256 + extra, split)


@SPLITS
def test_the_names_equal_the_reference(split):
    names = data.default_dataset().read_bytes()[:60_000]
    tokenizer = agrees(names, 256 + 30, split)
    assert len(tokenizer.merges) == 30


@SPLITS
def test_a_character_from_every_plane_equals_the_reference(split):
    tokenizer = agrees(PLANE_TEXT, 256 + 120, split)
    assert tokenizer.decode(tokenizer.encode(PLANE_TEXT)) == PLANE_TEXT


@pytest.mark.slow
@SPLITS
def test_a_longer_text_equals_the_reference(split):
    import os
    from pathlib import Path
    text = b"".join(p.read_bytes() for p in sorted(Path(os.path.dirname(os.__file__)).glob("a*.py")))
    agrees(text[:150_000], 256 + 150, split)


def test_encoding_another_text_equals_the_reference():
    tokenizer = bpe.train(PLANE_TEXT, 256 + 80, "gpt4")
    other = "a😀 b\U00100000 aé, ééé a\U00030000\U00030000 " * 5
    for split in bpe.SPLITS:
        other_tokenizer = bpe.BPE(tokenizer.merges, split)
        assert (other_tokenizer.encode(other).tolist()
                == reference_encode(other, tokenizer.merges, split))


def test_pair_keys_beyond_int32_give_the_same_merges():
    # K * id passes 2**31 here: the engine's keys must be int64 throughout
    text = data.default_dataset().read_bytes()[:20_000]
    seq = bpe_merge.Sequence(text, None, 10**7, count=True)
    assert bpe_merge.learn(seq, 40) == bpe.train(text, 256 + 40).merges


# --- the rules -----------------------------------------------------------------------

def test_ties_go_to_the_smallest_pair_and_counts_come_first():
    assert bpe.train("bcab", 257).merges == [(ord("a"), ord("b"))]  # three pairs, once each
    assert bpe.train("cdab", 257).merges == [(ord("a"), ord("b"))]
    assert bpe.train("bcbcab", 257).merges == [(ord("b"), ord("c"))]  # counted twice


def test_overlapping_occurrences_count_each_and_merge_left_to_right():
    a, z = ord("a"), ord("z")
    # zz occurs 3 times in "zzzz" (2 without overlap), ab twice: overlap counting picks zz
    tokenizer, ids = bpe.train_sequence("zzzz" + "abab", 257)
    assert tokenizer.merges == [(z, z)]
    assert ids.tolist() == [256, 256, a, ord("b"), a, ord("b")]
    tokenizer = bpe.BPE([(a, a)])
    assert tokenizer.encode("aaa").tolist() == [256, a]
    assert tokenizer.encode("aaaa").tolist() == [256, 256]
    assert tokenizer.encode("aaaaa").tolist() == [256, 256, a]
    tokenizer, ids = bpe.train_sequence("aaa", 257)
    assert tokenizer.merges == [(a, a)] and ids.tolist() == [256, a]
    assert bpe.train("aaa", 300).merges == [(a, a), (256, a)]  # then [aa, a] is a pair


def test_training_stops_when_no_pair_is_left():
    assert bpe.train("", 1000).merges == []
    tokenizer = bpe.train("a", 1000)
    assert tokenizer.merges == [] and tokenizer.vocab_size == 256
    assert tokenizer.encode("a").tolist() == [97]
    assert tokenizer.encode("").dtype == np.uint16 and len(tokenizer.encode("")) == 0
    assert tokenizer.decode([]) == "" and tokenizer.decode(np.zeros(0, np.uint16)) == ""
    tokenizer = bpe.train("abcabc", 1000)  # ab, abc, abcabc: a pair merged even once
    assert tokenizer.vocab_size == 256 + 3
    assert tokenizer.encode("abcabc").tolist() == [258]


def test_the_gpt4_split_never_merges_across_a_chunk_boundary():
    text = "a b a b a b"
    whole = bpe.train(text, 300)
    assert any(b"a " in whole.token_bytes(256 + i) for i in range(len(whole.merges)))
    tokenizer = bpe.train(text, 300, "gpt4")
    assert tokenizer.merges == [(ord(" "), ord("b")), (ord(" "), ord("a"))]
    assert [tokenizer.token_bytes(int(i)) for i in tokenizer.encode(text)] == [
        b"a", b" b", b" a", b" b", b" a", b" b"]


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet="ab 1.\n'sé😀", max_size=60))
def test_gpt4_tokens_end_at_every_chunk_boundary(text):
    tokenizer = bpe.train(text * 3, 300, "gpt4")
    ends = np.cumsum([len(tokenizer.token_bytes(int(i))) for i in tokenizer.encode(text)])
    bounds = np.cumsum([len(c) for c in chunks_of(text, "gpt4")])
    assert set(bounds.tolist()) <= set(ends.tolist())
    assert b"".join(chunks_of(text, "gpt4")) == text.encode("utf-8")  # the pattern covers all


def test_the_compact_dtype():
    assert bpe.train("abab", 400).encode("ab").dtype == np.uint16
    every_byte_pair = [(a, b) for a in range(256) for b in range(256)]  # vocabulary 65,792
    tokenizer = bpe.BPE(every_byte_pair)
    assert tokenizer.vocab_size > 1 << 16 and tokenizer.dtype == np.uint32
    ids = tokenizer.encode("hello")
    assert ids.dtype == np.uint32 and tokenizer.decode(ids) == "hello"
    # merges in their order: (e, l) comes before (h, e), so "h" stays alone
    assert ids.tolist() == [104, 256 + 101 * 256 + 108, 256 + 108 * 256 + 111]


# --- encode, decode -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizers():
    text = PLANE_TEXT + data.default_dataset().read_text()[:20_000]
    return {split: bpe.train(text, 256 + 200, split) for split in bpe.SPLITS}


@settings(max_examples=200, deadline=None)
@given(text=st.text(), split=st.sampled_from(bpe.SPLITS))
def test_decode_inverts_encode(tokenizers, text, split):
    tokenizer = tokenizers[split]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode(text.encode("utf-8"))) == text


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(PLANES + list("ab \n")), max_size=50))
def test_every_plane_round_trips(tokenizers, text):
    for tokenizer in tokenizers.values():
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bytes_that_are_not_utf8_encode_as_bytes(tokenizers):
    raw = b"\xff\xfe ab \xc3"
    tokenizer = tokenizers["none"]
    assert tokenizer.decode_bytes(tokenizer.encode(raw)) == raw
    with pytest.raises(DataError, match="not UTF-8"):
        tokenizers["gpt4"].encode(raw)
    with pytest.raises(DataError, match="surrogate"):
        tokenizer.encode("a\ud800b")


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 255 + 200), max_size=40))
def test_any_ids_decode_as_their_bytes_would(tokenizers, ids):
    tokenizer = tokenizers["none"]
    joined = b"".join(tokenizer.token_bytes(i) for i in ids)
    assert tokenizer.decode(ids) == joined.decode("utf-8", errors="replace")
    assert tokenizer.decode(np.array(ids, np.uint16)) == tokenizer.decode(ids)


def test_a_cut_character_decodes_as_the_replacement_character(tokenizers):
    tokenizer = tokenizers["none"]
    ids = tokenizer.encode("ab😀").tolist()
    cut = tokenizer.encode(b"ab" + "😀".encode()[:2])  # a sample that stops mid-character
    assert tokenizer.decode(cut) == "ab\ufffd" and tokenizer.decode(ids) == "ab😀"
    assert all(isinstance(tokenizer.decode([i]), str) for i in range(tokenizer.vocab_size))
    # learned tokens that are parts of a character: random ids above cut characters too
    learned = [tokenizer.token_bytes(i) for i in range(256, tokenizer.vocab_size)]
    assert any("\ufffd" in t.decode("utf-8", errors="replace") for t in learned)


def test_ids_outside_the_vocabulary_are_refused(tokenizers):
    tokenizer = tokenizers["none"]
    for bad in ([tokenizer.vocab_size], [-1], [0.5]):
        with pytest.raises(DataError):
            tokenizer.decode(bad)
    with pytest.raises(DataError):
        tokenizer.token_bytes(tokenizer.vocab_size)


def test_token_bytes():
    tokenizer = bpe.train("hello hello", 261)
    assert tokenizer.token_bytes(104) == b"h"
    assert [tokenizer.token_bytes(i) for i in tokenizer.encode("hello hello")] == [
        b"hello", b" hello"]


# --- arguments -----------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size", [255, 0, -5, 300.0, "300", True, None])
def test_a_vocab_size_below_256_or_not_an_integer_is_refused(vocab_size):
    with pytest.raises(ConfigError, match="vocab_size"):
        bpe.train("abc", vocab_size)


def test_an_unknown_split_is_refused():
    with pytest.raises(ConfigError, match="split"):
        bpe.train("abc", 300, "gpt2")


def test_the_gpt4_split_without_regex_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "regex", None)
    with pytest.raises(TinylmError, match="pip install regex"):
        bpe.train("a b", 300, "gpt4")
    assert bpe.train("a b", 300).merges  # the plain split needs nothing


# --- JSON ----------------------------------------------------------------------------

def test_json_round_trip(tmp_path, tokenizers):
    for tokenizer in tokenizers.values():
        again = bpe.BPE.from_json(json.loads(json.dumps(tokenizer.to_json())))
        assert again == tokenizer and again.merges == tokenizer.merges
        tokenizer.save(tmp_path / "m.json")
        assert bpe.load(tmp_path / "m.json") == tokenizer
    d = tokenizers["gpt4"].to_json()
    assert d["format"] == "tinylm-bpe" and d["version"] == 1 and d["split"] == "gpt4"
    assert d["merges"][0] == list(tokenizers["gpt4"].merges[0])
    empty = bpe.train("", 300)
    empty.save(tmp_path / "e.json")
    assert bpe.load(tmp_path / "e.json") == empty


GOOD = {"format": "tinylm-bpe", "version": 1, "split": "none", "merges": [[97, 98], [256, 99]]}


@pytest.mark.parametrize("change, message", [
    ([], "JSON object"),
    ({"format": "tiktoken"}, "format"),
    ({"format": None}, "format"),
    ({"version": 2}, "version 2"),
    ({"version": True}, "version"),
    ({"version": "1"}, "version"),
    ({"split": "gpt2"}, "split"),
    ({"merges": {"0": [97, 98]}}, "list"),
    ({"merges": [[97, 98, 99]]}, "merge 0"),
    ({"merges": [[97]]}, "merge 0"),
    ({"merges": [97, 98]}, "merge 0"),
    ({"merges": [[97, "b"]]}, "merge 0"),
    ({"merges": [[97, 98.0]]}, "merge 0"),
    ({"merges": [[True, 98]]}, "merge 0"),
    ({"merges": [[256, 97]]}, "not defined"),
    ({"merges": [[97, 98], [257, 97]]}, "not defined"),
    ({"merges": [[-1, 97]]}, "not defined"),
    ({"merges": [[97, 98], [97, 98]]}, "repeats merge 0"),
    ({"vocab": {}}, "unknown field"),
])
def test_malformed_json_is_refused_in_one_line(change, message):
    d = change if isinstance(change, list) else {**GOOD, **change}
    if isinstance(change, dict) and change.get("format", "") is None:
        del d["format"]
    with pytest.raises(bpe.MergesError, match=message) as e:
        bpe.BPE.from_json(d)
    assert "\n" not in str(e.value) and isinstance(e.value, TinylmError)
    assert bpe.BPE.from_json(GOOD).merges == [(97, 98), (256, 99)]


def test_merges_given_in_python_are_checked_alike():
    assert bpe.BPE([(97, 98), (np.int64(256), 99)]).merges == [(97, 98), (256, 99)]
    for merges, message in [([(256, 97)], "not defined"), ([(97,)], "merge 0"),
                            ([(97, 98), (97, 98)], "repeats"), ([(97, "b")], "merge 0")]:
        with pytest.raises(bpe.MergesError, match=message):
            bpe.BPE(merges)


@pytest.mark.parametrize("content, message", [
    (b"{", "not JSON"),
    (b"\xff{}", "not UTF-8"),
    (b'{"format": "tinylm-bpe", "version": 1, "split": "none", "merges": [[300, 1]]}',
     "not defined"),
])
def test_a_malformed_merges_file_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_bytes(content)
    with pytest.raises(bpe.MergesError, match=message) as e:
        bpe.load(path)
    assert "m.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        bpe.load(tmp_path / "missing.json")


# --- the command line ----------------------------------------------------------------

def test_cli_train_encode_decode(tmp_path, capsys):
    text = tmp_path / "doc.txt"
    content = ("def f(x):\n    return x + 1  # é😀\n" * 50).encode("utf-8")
    text.write_bytes(content)
    merges, ids = tmp_path / "m.json", tmp_path / "ids.npy"
    assert main(["bpe", "train", str(text), "--vocab-size", "270", "-o", str(merges)]) == 0
    out = capsys.readouterr().out
    assert "learned 14 merges from 1,850 bytes" in out and "bytes per token" in out
    assert "ran out of pairs" not in out
    tokenizer = bpe.load(merges)
    assert tokenizer.vocab_size == 270 and tokenizer.split == "none"
    assert main(["bpe", "encode", str(merges), str(text), "--out", str(ids)]) == 0
    out = capsys.readouterr().out
    saved = np.load(ids)
    assert saved.dtype == np.uint16 and saved.tolist() == tokenizer.encode(content).tolist()
    assert f"{len(saved):,} tokens" in out
    assert main(["bpe", "decode", str(merges), str(ids)]) == 0
    assert capsys.readouterr().out == content.decode("utf-8")
    assert main(["bpe", "train", str(text), "--vocab-size", "280", "--bpe-split", "gpt4",
                 "-o", str(merges)]) == 0
    assert bpe.load(merges).split == "gpt4"
    assert main(["bpe", "train", str(text), "--vocab-size", "1000", "-o", str(merges)]) == 0
    assert "ran out of pairs" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "{bad}", "--vocab-size", "300", "-o", "{out}"], "not UTF-8"),
    (["train", "{doc}", "--vocab-size", "100", "-o", "{out}"], "below 256"),
    (["train", "{doc}", "--vocab-size", "300", "-o", "{tmp}/no/m.json"], "does not exist"),
    (["train", "{doc}", "--vocab-size", "300", "-o", "{tmp}"], "is a directory"),
    (["train", "{doc}", "--vocab-size", "300", "--bpe-split", "x", "-o", "{out}"], "invalid choice"),
    (["encode", "{doc}", "{doc}"], "not JSON"),
    (["decode", "{out}", "{doc}"], "not a .npy"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\n")
    (tmp_path / "doc.txt").write_text("abc abc\n")
    bpe.train("abc", 260).save(tmp_path / "m.json")
    names = {"bad": tmp_path / "bad.txt", "doc": tmp_path / "doc.txt", "tmp": tmp_path,
             "out": tmp_path / "m.json"}
    before = (tmp_path / "m.json").read_bytes()
    assert main(["bpe", *(a.format(**names) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "m.json").read_bytes() == before  # nothing half-written


def test_cli_help_explains(capsys):
    assert main(["bpe", "--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "encode" in out and "decode" in out and "256 byte values" in out
    assert main(["bpe", "train", "--help"]) == 0
    assert "--vocab-size" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "bpe" in capsys.readouterr().out
