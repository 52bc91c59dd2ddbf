"""``tinylm train --format text`` end to end: every model kind on a document with tabs,
blank lines and indentation; its splits concatenate back to the input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tinylm import runs
from tinylm.cli import main

# tabs, indentation, blank lines, trailing spaces, a line without an end, CRLF
DOC = ("class A:\r\n\tdef f(self, x):  \r\n\t\treturn x * 2\r\n\r\n\r\n"
       "    # four spaces, then a tab:\t!\n" * 30) + "the end, no newline"
NORMAL = DOC.replace("\r\n", "\n")

TINY = {
    "bigram": ["--steps", "3", "--eval-every", "2"],
    "mlp": ["--context", "3", "--n-embd", "4", "--n-hidden", "8", "--steps", "3", "--eval-every", "2"],
    "bnmlp": ["--n-layers", "2", "--n-hidden", "8", "--steps", "3", "--eval-every", "2"],
    "wavenet": ["--n-hidden", "8", "--n-embd", "4", "--steps", "3", "--eval-every", "2"],
    "transformer": ["--n-embd", "8", "--n-layers", "1", "--n-heads", "2", "--block-size", "16",
                    "--steps", "3", "--eval-every", "2"],
    "rnn": ["--n-embd", "8", "--n-embd2", "8", "--block-size", "16", "--steps", "3"],
    "gru": ["--n-embd", "8", "--n-embd2", "8", "--block-size", "16", "--steps", "3"],
}


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(DOC.encode("utf-8"))
    return path


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", sorted(TINY))
def test_every_neural_model_trains_on_a_text_and_its_splits_give_the_input_back(
        tmp_path, doc, model, capsys):
    run = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(run), "--model", model,
                 "-n", "1", *TINY[model]]) == 0
    joined = b"".join((run / f"{name}.txt").read_bytes() for name in ("train", "val", "test"))
    assert joined == NORMAL.encode("utf-8")
    assert (run / "train.txt").read_bytes().endswith(b"\n")  # cut at a line end
    opened = runs.open_run(run)
    assert opened.format == "text"
    tokens = np.concatenate(opened.tokens)
    assert opened.tokenizer.decode(tokens) == NORMAL
    assert tokens.dtype == np.uint8 and isinstance(opened.tokens[0], np.memmap)
    records = read_metrics(run)
    final = records[-1]
    assert np.isfinite(final["test_loss"]) and "val_loss" in records[0]
    out = capsys.readouterr().out
    assert "format text" in out and "bits" in out
    passage = (run / "samples.txt").read_text()
    assert len(passage) == 500  # a continuous passage, not items
    # tinylm sample prints the same passage from the run directory alone
    assert main(["sample", "-o", str(run)]) == 0
    assert passage in capsys.readouterr().out
    assert main(["eval", "-o", str(run)]) == 0
    said = capsys.readouterr().out
    assert "bits) per character" in said and said.count("loss") == 3


def test_a_text_run_resumes_bit_identically(tmp_path, doc):
    common = ["train", "--format", "text", "-i", str(doc), "--model", "transformer",
              *TINY["transformer"][:-4], "--eval-every", "2", "-n", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*common, "-o", str(straight), "--steps", "6"]) == 0
    assert main([*common, "-o", str(stopped), "--steps", "3"]) == 0
    assert main(["train", "-o", str(stopped), "--resume", "--steps", "6", "-n", "0"]) == 0
    assert read_metrics(stopped) == read_metrics(straight)
    assert runs.open_run(stopped).format == "text"


def test_a_large_split_is_estimated_with_its_standard_error(tmp_path, doc):
    run = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(run), "--model", "mlp",
                 *TINY["mlp"], "--eval-tokens", "300", "-n", "0"]) == 0
    first = read_metrics(run)[0]
    assert first["train_loss_se"] > 0  # train (1,500 characters) is estimated
    assert "val_loss_se" not in first  # val (a few dozen) is scored whole


def test_loader_is_refused_with_format_text(tmp_path, doc, capsys):
    assert main(["train", "--format", "text", "--loader", "stream", "-i", str(doc),
                 "-o", str(tmp_path / "r"), "--model", "mlp"]) == 2
    assert "--loader applies to --format lines" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sample_tokens_writes_a_passage_for_a_lines_run_too(tmp_path, few_names, capsys):
    run = tmp_path / "run"
    assert main(["train", "-i", str(few_names), "-o", str(run), "--model", "mlp",
                 *TINY["mlp"], "-n", "0"]) == 0
    capsys.readouterr()
    assert main(["sample", "-o", str(run), "--tokens", "300", "--prompt", "a"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sample (300 characters after 'a'):\na")
    assert len(out.split("\n", 1)[1]) == 301 + 1  # the prompt, 300 characters, the newline


def test_lines_keep_a_tab_inside_an_item_and_name_format_text_for_other_controls(tmp_path, capsys):
    good = tmp_path / "tabs.txt"
    good.write_text("".join(f"a\tb{i}\n" for i in range(20)))
    run = tmp_path / "run"
    assert main(["train", "-i", str(good), "-o", str(run), "--order", "2"]) == 0
    assert "\t" in runs.open_run(run).tokenizer.itos
    bad = tmp_path / "esc.txt"
    bad.write_text("ok\nb\x1b[0m\n" * 10)
    assert main(["train", "-i", str(bad), "-o", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "line 2 contains the control character U+001B" in err and "--format text" in err


@pytest.mark.parametrize("flags, unit", [([], "characters"),
                                         (["--tokenizer", "bpe", "--vocab-size", "260"], "tokens")])
def test_a_run_too_large_for_memory_is_one_line_naming_the_longest_item(tmp_path, capsys,
                                                                         monkeypatch, flags, unit):
    from tinylm import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 8 << 30)  # any machine: 8 GiB
    path = tmp_path / "long.txt"
    # every letter, none twice in a row: four BPE merges leave most of it as it is
    long = "".join(chr(97 + (i * 7) % 26) for i in range(200_000))
    path.write_text("\n".join(["anna", "bob"] * 10 + [long]) + "\n")
    run = tmp_path / "run"
    assert main(["train", "-i", str(path), "-o", str(run), "--model", "gru", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(rf"longest item has [\d,]+ {unit}, so", err)
    assert "--format text" in err and not run.exists()


@pytest.mark.parametrize("method", ["additive", "kneser-ney"])
def test_the_ngram_counts_a_text_as_one_stream(tmp_path, doc, method, capsys):
    from tinylm.ngram import NgramConfig, NgramModel, nll

    run = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(run), "--method", method,
                 "--order", "3"]) == 0
    joined = b"".join((run / f"{name}.txt").read_bytes() for name in ("train", "val", "test"))
    assert joined == NORMAL.encode("utf-8")
    opened = runs.open_run(run)
    assert opened.format == "text" and opened.model.config.order == 3
    # the same model counted from windows made the slow way: "\n" before the split's start
    train = opened.tokenizer.encode(opened.tokenizer.decode(opened.tokens[0]))
    padded = [0, 0] + train
    X = np.array([padded[i:i + 2] for i in range(len(train))])
    model = NgramModel(NgramConfig(3, opened.tokenizer.vocab_size, method,
                                   opened.model.config.smoothing)).fit(X, np.array(train))
    test = opened.tokenizer.encode(opened.tokenizer.decode(opened.tokens[2]))
    Xt = np.array([([0, 0] + test)[i:i + 2] for i in range(len(test))])
    assert read_metrics(run)[-1]["test_loss"] == pytest.approx(nll(model, Xt, np.array(test)),
                                                               rel=1e-12)
    assert len((run / "samples.txt").read_text()) == 500
    capsys.readouterr()
    assert main(["eval", "-o", str(run)]) == 0
    assert "format text" in capsys.readouterr().out


def test_a_large_alphabet_searches_the_orders_it_can_count(tmp_path, capsys):
    path = tmp_path / "wide.txt"
    chars = [chr(0x4E00 + i) for i in range(3000)]
    path.write_text("".join(chars[(i * 7919) % 3000] + ("\n" if i % 40 == 39 else "")
                            for i in range(30_000)))
    run = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(path), "-o", str(run)]) == 0
    out = capsys.readouterr().out
    assert "note: order 6 is left out of the search" in out  # 3001**6 > 2**63
    assert "the 32 most frequent" not in out  # the picture is drawn, not printed
