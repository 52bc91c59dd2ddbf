"""``--tokenizer bpe``: every model on byte-level BPE tokens, and bits per character that
compare a char run and a BPE run (tinylm.tokenizer)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tinylm
from tinylm import bpe, data, runs, serve, text
from tinylm.errors import ConfigError
from tinylm.cli import main
from tinylm.tokenizer import BPETokenizer, TokenizerSettings

from test_cli_neural import interrupted_at

NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "harper",
         "evelyn", "abigail", "emily", "ella", "zoë", "chloé"]
BPE = ["--tokenizer", "bpe", "--vocab-size", "300"]
# a document of code: indentation, blank lines, a character of two bytes
DOC = "".join(f"def f{i}(x, y={i * 7 % 13}):\n    return x * {i} + y\n\n\nclass Zoë{i % 9}:\n"
              f"    pass  # {'abcdefghij'[i % 10] * (i % 4)}\n" for i in range(60)) + "the end\n"

TINY = {
    "bigram": ["--steps", "3", "--eval-every", "2"],
    "mlp": ["--context", "3", "--n-embd", "4", "--n-hidden", "8", "--steps", "3",
            "--eval-every", "2"],
    "bnmlp": ["--n-layers", "2", "--n-hidden", "8", "--steps", "3", "--eval-every", "2"],
    "wavenet": ["--n-hidden", "8", "--n-embd", "4", "--steps", "3", "--eval-every", "2"],
    "transformer": ["--n-embd", "8", "--n-layers", "1", "--n-heads", "2", "--steps", "3",
                    "--eval-every", "2"],
    "rnn": ["--n-embd", "8", "--n-embd2", "8", "--steps", "3", "--eval-every", "2"],
    "gru": ["--n-embd", "8", "--n-embd2", "8", "--steps", "3", "--eval-every", "2"],
    "ngram": ["--order", "2"],
}
SEQ = ("transformer", "rnn", "gru")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("doc") / "doc.py"
    path.write_text(DOC, encoding="utf-8")
    return path


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


# --- the tokenizer of items -----------------------------------------------------------------------

@pytest.mark.parametrize("split", ["none", "gpt4"])
def test_a_bpe_of_items_never_crosses_an_items_end(split):
    """Trained on items as chunks: no token holds the newline, so the joined items encode as
    each item alone followed by the end token, and the end token ends every item."""
    pytest.importorskip("regex") if split == "gpt4" else None
    lines = data.read_lines(data.default_dataset())[:3000] + ["a.", "x, y", "zoë!"]
    joined = "".join(line + "\n" for line in lines).encode("utf-8")
    tokenizer = BPETokenizer(bpe.train(joined, 600, split, lines=True),
                             TokenizerSettings("bpe", 600, split))
    assert all(b"\n" not in tokenizer.model.token_bytes(i) for i in range(256, 600))
    items = data.Items(lines, tokenizer)
    tokens, lengths = items.tokens, items.lengths
    alone = np.concatenate([np.r_[tokenizer.encode(line), tokenizer.eot] for line in lines])
    np.testing.assert_array_equal(tokens, alone)
    assert lengths.sum() == len(tokens) and (lengths >= 2).all()
    assert tokenizer.decode(tokens) == joined.decode("utf-8")


def test_the_tokenizer_settings_refuse_what_makes_no_sense():
    with pytest.raises(ConfigError, match="--vocab-size 100 is out of range"):
        TokenizerSettings("bpe", 100)
    with pytest.raises(ConfigError, match="--tokenizer bpe needs --vocab-size"):
        TokenizerSettings("bpe")
    with pytest.raises(ConfigError, match="--vocab-size applies to --tokenizer bpe"):
        TokenizerSettings("char", 300)
    with pytest.raises(ConfigError, match="--bpe-split applies to --tokenizer bpe"):
        TokenizerSettings("char", None, "gpt4")



@pytest.mark.parametrize("flags, message", [
    (["--model", "transformer", "--backend", "numpy", "--compile"], "--compile needs a torch"),
    (["--model", "mlp", "--dtype", "bfloat16"], "--dtype bfloat16 needs a torch backend"),
    (["--model", "mlp", "--device", "cuda"], "--device cuda needs a torch backend"),
    (["--model", "gru", "--diagnose-every", "5"], "--diagnose-every is not available"),
])
def test_settings_are_refused_before_a_bpe_is_learned(tmp_path, names, capsys, monkeypatch,
                                                      flags, message):
    # learning a BPE takes minutes on a large text: a setting that cannot run says so first
    def learned(*args, **kwargs):
        raise AssertionError("the BPE was learned before the settings were checked")
    monkeypatch.setattr(bpe, "train", learned)
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), *BPE, *flags]) == 2
    assert message in one_line(capsys)
    assert not out.exists()

@pytest.mark.parametrize("flags, message", [
    (["--vocab-size", "100", "--tokenizer", "bpe"], "--vocab-size 100 is out of range"),
    (["--vocab-size", "300"], "--vocab-size applies to --tokenizer bpe"),
    (["--bpe-split", "gpt4", "--model", "mlp"], "--bpe-split applies to --tokenizer bpe"),
    (["--tokenizer", "bpe"], "--tokenizer bpe needs --vocab-size N"),
    (["--tokenizer", "bpe", "--vocab-size", "300", "--bpe-split", "gpt5"], "invalid choice"),
    (["--tokenizer", "words"], "invalid choice"),
])
def test_bad_tokenizer_flags_are_one_line_and_write_nothing(tmp_path, names, capsys, flags,
                                                              message):
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), *flags]) == 2
    assert message in one_line(capsys)
    assert not out.exists()


def test_a_tokenizers_files_are_those_it_keeps_in_a_run():
    bpe_tokenizer = BPETokenizer(bpe.train("".join(n + "\n" for n in NAMES).encode("utf-8"), 260,
                                           lines=True), TokenizerSettings("bpe", 260))
    for tokenizer in (data.Tokenizer.from_lines(NAMES), bpe_tokenizer):
        assert tokenizer.files == tuple(tokenizer.to_run()[1])
    assert bpe_tokenizer.files == ("merges.json",) and data.Tokenizer.files == ()


# --- every model on BPE tokens --------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(TINY))
def test_every_model_trains_samples_and_evaluates_on_bpe_tokens(tmp_path, names, capsys, model):
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), "--model", model, *BPE,
                 *TINY[model], "-n", "3"]) == 0
    said = capsys.readouterr().out
    assert "tokenizer: byte-level BPE" in said and "bits per character" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert "vocab" not in manifest and manifest["tokenizer"] == {
        "tokenizer": "bpe", "vocab_size": 300, "bpe_split": "none", "file": "merges.json"}
    assert manifest["files"]["merges.json"] and (out / "merges.json").is_file()
    wrote = next(line for line in said.splitlines() if line.startswith("wrote "))
    assert ", merges.json" in wrote  # named by the tokenizer's files
    opened = runs.open_run(out)
    merges = bpe.load(out / "merges.json")  # the run's tokenizer is tinylm bpe's format
    assert opened.tokenizer.model == merges and opened.tokenizer.vocab_size == merges.vocab_size
    assert (opened.model_config or opened.ngram).vocab_size == merges.vocab_size
    final = read_metrics(out)[-1]
    assert final["test_bpc"] > 0 and math.isfinite(final["test_loss"])
    # items end at the end token: every sample is a whole item, from the prompt on
    assert main(["sample", "-o", str(out), "-n", "4", "--prompt", "em"]) == 0
    items = [line.strip() for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")]
    assert len(items) == 4 and all(item.startswith("em") for item in items)
    assert main(["eval", "-o", str(out)]) == 0
    evaluated = capsys.readouterr().out
    test_line = next(line for line in evaluated.splitlines() if line.strip().startswith("test:"))
    assert test_line.startswith(f" test: loss {final['test_loss']:.4f} nats per token, ")
    assert test_line.endswith(f", {final['test_bpc']:.4f} bits per character")


@pytest.mark.parametrize("model", ["mlp", "transformer", "ngram"])
def test_every_model_trains_on_the_bpe_tokens_of_a_text(tmp_path, doc, capsys, model):
    out = tmp_path / "run"
    flags = [*TINY[model], "--block-size", "16"] if model in SEQ else TINY[model]
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(out), "--model", model,
                 *BPE, *flags, "-n", "1"]) == 0
    opened = runs.open_run(out)
    tokens = np.concatenate(opened.tokens)
    assert opened.tokenizer.decode(tokens) == DOC  # each split encoded whole, none lost
    assert len(tokens) < len(DOC.encode("utf-8")) / 2  # merges across lines: indentation
    assert opened.characters == tuple(len((out / f"{s}.txt").read_text()) for s in
                                      ("train", "val", "test"))
    assert main(["sample", "-o", str(out), "--tokens", "20", "--prompt", "def "]) == 0
    assert "sample (20 tokens after 'def ')" in capsys.readouterr().out


@pytest.mark.parametrize("model, flags", [
    ("ngram", ["--method", "kneser-ney"]),  # every order of the grid and the additive comparison
    ("ngram", []),
    ("transformer", TINY["transformer"]),  # its block size from the longest item
    ("mlp", TINY["mlp"]),
])
def test_each_split_of_items_is_encoded_once(tmp_path, names, monkeypatch, model, flags):
    """A BPE encodes slowly: a run of items encodes each split once, whatever it makes of it
    (every order of an n-gram grid, a block size, the examples, bits per character), and so
    does tinylm eval."""
    encoded = []
    for method in ("encode", "encode_bytes"):
        def counted(self, text, *args, _method=getattr(BPETokenizer, method), **kwargs):
            encoded.append(text.encode("utf-8") if isinstance(text, str) else bytes(text))
            return _method(self, text, *args, **kwargs)
        monkeypatch.setattr(BPETokenizer, method, counted)
    out = tmp_path / "run"
    for command in (["train", "-i", str(names), "-o", str(out), "--model", model, *BPE, *flags,
                     "-n", "0"], ["eval", "-o", str(out)]):
        encoded.clear()
        assert main(command) == 0
        for split in ("train", "val", "test"):
            assert encoded.count((out / f"{split}.txt").read_bytes()) == 1, (command[0], split)


# --- bits per character ---------------------------------------------------------------------------

def test_a_char_runs_bits_per_character_are_its_nats_in_bits(tmp_path, names, doc):
    """Where a token is a character the two are one number: exactly loss / ln 2."""
    for fmt, path in (("lines", names), ("text", doc)):
        out = tmp_path / fmt
        assert main(["train", "--format", fmt, "-i", str(path), "-o", str(out), "--model",
                     "mlp", *TINY["mlp"], "-n", "0"]) == 0
        records = [r for r in read_metrics(out) if "val_loss" in r or "test_loss" in r]
        assert records
        for record in records:
            for split in ("train", "val", "test"):
                if f"{split}_loss" in record:
                    assert record[f"{split}_bpc"] == record[f"{split}_loss"] / math.log(2)
        losses = tinylm.load(out).evaluate()
        in_bits = tinylm.load(out).evaluate(bits=True)
        assert all(in_bits[s] == losses[s] / math.log(2) for s in losses)


@pytest.mark.parametrize("fmt", ["lines", "text"])
def test_bpe_bits_per_character_are_over_the_same_held_out_text_as_chars(tmp_path, names, doc,
                                                                         fmt):
    path = names if fmt == "lines" else doc
    common = ["--format", fmt, "-i", str(path), "--model", "mlp", *TINY["mlp"], "-n", "0"]
    assert main(["train", *common, "-o", str(tmp_path / "char")]) == 0
    assert main(["train", *common, *BPE, "-o", str(tmp_path / "bpe")]) == 0
    char, byte = runs.open_run(tmp_path / "char"), runs.open_run(tmp_path / "bpe")
    for name in ("val.txt", "test.txt"):  # the same held-out text, byte for byte
        assert (tmp_path / "char" / name).read_bytes() == (tmp_path / "bpe" / name).read_bytes()
    final = read_metrics(tmp_path / "bpe")[-1]
    if fmt == "text":
        characters = len(char.tokens[2])  # the char run's test tokens are its characters
        tokens = len(byte.tokens[2])
    else:
        characters = sum(len(line) + 1 for line in char.lines3[2])  # "\n" counted once
        tokens = len(data.stream_tokens(byte.lines3[2], byte.tokenizer))
    assert tokens < characters
    assert final["test_bpc"] == pytest.approx(
        final["test_loss"] * tokens / characters / math.log(2), rel=1e-12)


# --- the torch backends compute the same numbers -----------------------------------------------

@pytest.mark.parametrize("model", SEQ)
def test_sequence_models_on_bpe_tokens_agree_on_every_backend(tmp_path, names, model):
    pytest.importorskip("torch")
    out = {}
    for backend in ("numpy", "torch", "torch-module"):
        out[backend] = tmp_path / backend
        assert main(["train", "-i", str(names), "-o", str(out[backend]), "--model", model, *BPE,
                     *TINY[model], "--steps", "6", "--batch-size", "8", "--backend", backend,
                     "--sample-tokens", "20", "-n", "0"]) == 0
    reference = read_metrics(out["numpy"])
    for backend in ("torch", "torch-module"):
        metrics = read_metrics(out[backend])
        assert len(metrics) == len(reference)
        for a, b in zip(reference, metrics):
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a), (a, b)
        assert (out[backend] / "sample.txt").read_text() == \
            (out["numpy"] / "sample.txt").read_text()


# --- resume, tampering, the other commands -----------------------------------------------------

@pytest.mark.parametrize("fmt", ["lines", "text"])
def test_a_bpe_run_resumes_bit_identically(tmp_path, names, doc, monkeypatch, fmt):
    path = names if fmt == "lines" else doc
    args = ["--format", fmt, "-i", str(path), "--model", "transformer", *BPE, *TINY["transformer"],
            "--steps", "12", "--eval-every", "5", "--batch-size", "8", "-n", "2"]
    if fmt == "text":
        args += ["--block-size", "16"]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(["train", "-o", str(straight), *args]) == 0
    with interrupted_at(monkeypatch, 7):
        assert main(["train", "-o", str(halves), *args]) == 130
    assert main(["train", "-o", str(halves), "--resume", "-n", "2"]) == 0
    for name in ("metrics.jsonl", "samples.txt", "merges.json", "weights-000000012.safetensors"):
        assert (straight / name).read_bytes() == (halves / name).read_bytes(), name


def test_a_resume_keeps_the_tokenizer(tmp_path, names, capsys):
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), "--model", "mlp", *BPE,
                 *TINY["mlp"], "-n", "0"]) == 0
    capsys.readouterr()
    assert main(["train", "-o", str(out), "--resume", "--vocab-size", "400"]) == 2
    assert "--vocab-size 400 differs from the run being resumed (300)" in one_line(capsys)
    assert main(["train", "-o", str(out), "--resume", "--tokenizer", "char"]) == 2
    assert "--tokenizer char differs from the run being resumed (bpe)" in one_line(capsys)
    assert main(["train", "-o", str(out), "--resume", *BPE, "--steps", "5", "-n", "0"]) == 0


def test_a_tampered_merges_file_is_refused_in_one_line(tmp_path, names, capsys):
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), "--model", "mlp", *BPE,
                 *TINY["mlp"], "-n", "0"]) == 0
    capsys.readouterr()
    merges = out / "merges.json"
    merges.write_text(merges.read_text().replace("[", "[ ", 2))  # the same merges, other bytes
    for command in (["eval", "-o", str(out)], ["sample", "-o", str(out)],
                    ["train", "-o", str(out), "--resume"]):
        assert main(command) == 2
        assert "merges.json is not the one the run was trained on" in one_line(capsys)


def test_the_python_api_and_the_report_read_a_bpe_run(tmp_path, names):
    run = tinylm.train("gru", names, out_dir=tmp_path / "run", quiet=True, tokenizer="bpe",
                       vocab_size=300, steps=4, eval_every=2, n_embd=8, n_embd2=8)
    assert run.config["tokenizer"] == "bpe" and run.config["vocab_size"] == 300
    assert run.tokenizer.vocab_size == 300 and run.tokenizer.decode(run.tokenizer.encode("zoë")) \
        == "zoë"
    assert set(run.evaluate(bits=True)) == {"train", "val", "test"}
    assert all(s.text.startswith("zo") for s in run.sample(n=3, prompt="zo"))
    from tinylm import report

    page = report.render([report.read_run(tmp_path / "run")])
    assert "<th>tokenizer</th><td>bpe</td>" in page and "test bits/char" in page


def test_the_playground_shows_every_bpe_token(tmp_path, names):
    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), "--model", "mlp", *BPE,
                 *TINY["mlp"], "-n", "0"]) == 0
    playground = serve.Playground(runs.open_run(out))
    assert len(playground.info()["vocab"]) == 300
    answer = playground.probs({"prompt": "zo"})
    shown = [t["char"] for t in answer["tokens"]]
    assert len(shown) == 300 and shown[10] == "\n" and shown[ord("a")] == "a"
    assert shown[0xC3] == "\ufffd"  # the first byte of "ë": part of a character
    assert abs(sum(t["p"] for t in answer["tokens"]) - 1) < 1e-9
    json.dumps(answer)  # what the page is sent
    items = playground.sample({"prompt": "zoë", "n": 3})["samples"]
    assert len(items) == 3 and all(item["text"].startswith("zoë") for item in items)
    with pytest.raises(serve.BadRequest, match="not in this model's vocabulary"):
        playground.probs({"prompt": "a\n"})


def test_export_of_a_bpe_run(tmp_path, names):
    """ONNX carries the merges; Hugging Face gets a byte-level tokenizer.json that encodes as
    tinylm (the export itself checks every token's text and the train split's start)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from tinylm import export

    out = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(out), "--model", "transformer", *BPE,
                 *TINY["transformer"], "-n", "0"]) == 0
    done = export.export(out, "onnx", tmp_path / "model.onnx")
    assert done.max_error <= export.TOLERANCE
    meta = export.onnx_metadata(done.path)
    merges = bpe.BPE.from_json(json.loads(meta["tinylm.merges.json"]))
    assert merges == bpe.load(out / "merges.json")
    done = export.export(out, "hf", tmp_path / "hf")
    assert done.max_error <= export.TOLERANCE
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = runs.open_run(out).tokenizer
    for item in ("emma", "chloé", "zoë ava", "€ and ☃"):  # bytes the data never had too
        ids = hf(item)["input_ids"]
        assert ids == [ours.eot, *ours.encode(item)]
        assert hf.decode(ids, skip_special_tokens=True) == item


def test_an_ngram_counts_a_large_bpe_vocabulary_sparsely(tmp_path, capsys):
    """Thousands of tokens: the counts stay the pairs seen, and the orders whose n-grams
    cannot be keyed in 63 bits are left out of the search with a note."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "zu", "ël"]
    words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(4000)]
    path = tmp_path / "words.txt"
    path.write_text("".join(w + (" " if i % 9 else "\n") for i, w in enumerate(words)))
    out = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(path), "-o", str(out), "--tokenizer",
                 "bpe", "--vocab-size", "2048", "-n", "0"]) == 0
    said = capsys.readouterr().out
    assert runs.open_run(out).tokenizer.vocab_size == 2048
    assert "order 6 is left out of the search: 2,048 tokens have too many possible n-grams" in said
    assert "bits/char" in said and "test loss" in said


def test_a_text_run_made_before_characters_were_kept_still_opens(tmp_path, doc):
    out = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(out), "--model", "mlp",
                 *TINY["mlp"], "-n", "0"]) == 0
    before = tinylm.load(out).evaluate(bits=True)
    for name in ("manifest.json", "config.json"):
        saved = json.loads((out / name).read_text())
        del saved["tokens"]["characters"]
        (out / name).write_text(json.dumps(saved))
    assert runs.open_run(out).characters == (None, None, None)
    assert tinylm.load(out).evaluate(bits=True) == before
    assert text.bits(1.0) == 1 / math.log(2)
