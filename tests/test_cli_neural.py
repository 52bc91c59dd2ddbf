"""``tinylm train/sample/eval`` for neural models, end to end through ``main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinylm.cli import main

SMALL = ["--model", "mlp", "--context", "3", "--n-embd", "4", "--n-hidden", "16", "--steps", "30",
         "--eval-every", "10", "--eval-train-batches", "5", "--batch-size", "32"]


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte",
                               "amelia", "harper", "evelyn", "abigail", "emily", "ella"] * 3) + "\n")
    return path


def test_train_sample_eval(tmp_path, names, capsys):
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), "-n", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "training mlp (numpy" in out and "test loss" in out
    assert "(new)" in out or "(copy of a training item)" in out
    for name in ("config.json", "checkpoint.json", "checkpoint.npz", "metrics.jsonl", "samples.txt",
                 "train.txt", "val.txt", "test.txt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "mlp" and config["vocab"][0] == "\n"
    final = read_metrics(run)[-1]
    assert final["step"] == 30 and "test_perplexity" in final
    # the end-of-training samples are what `tinylm sample` prints with its default seed
    samples = (run / "samples.txt").read_text().split()
    assert main(["sample", "-o", str(run), "-n", "4"]) == 0
    printed = capsys.readouterr().out
    assert all(s in printed for s in samples)
    assert main(["sample", "-o", str(run), "-n", "3", "--prompt", "em", "--temperature", "0.5",
                 "--top-k", "3"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("  ")]
    assert len(lines) == 3 and all(l.strip().startswith("em") for l in lines)
    assert main(["eval", "-o", str(run)]) == 0
    evaluated = capsys.readouterr().out
    test_line = next(l for l in evaluated.splitlines() if l.strip().startswith("test:"))
    assert f"{final['test_loss']:.4f}" in test_line


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps"),
    (["--backend", "cuda"], "--backend"),
    (["--lr", "-1"], "--lr"),
    (["--lr-schedule", "linear"], "--lr-schedule"),
    (["--recipe", "nope"], "--recipe"),
    (["-i", "/no/such/file.txt"], "does not exist"),
    (["--eval-every", "0"], "--eval-every"),
    (["--resume"], "no checkpoint"),
    (["--backend", "micrograd", "--context", "0"], "--context"),
    (["--model", "bnmlp", "--batch-size", "1"], "BatchNorm1d"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), *SMALL, *flags]) == 2
    assert message in _one_error_line(capsys)
    assert not run.exists()


def test_out_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert main(["train", "-o", str(path), *SMALL]) == 2
    assert "not a directory" in _one_error_line(capsys)
    assert path.read_text() == "x"


def test_sample_and_eval_of_a_missing_or_damaged_run(tmp_path, names, capsys):
    assert main(["sample", "-o", str(tmp_path / "none")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), "-n", "0", *SMALL]) == 0
    capsys.readouterr()
    assert main(["sample", "-o", str(run), "--prompt", "Q"]) == 2
    assert "'Q'" in _one_error_line(capsys)
    blob = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(blob[:-10])
    assert main(["eval", "-o", str(run)]) == 2
    assert "truncated or was modified" in _one_error_line(capsys)


def test_existing_run_needs_resume_and_resume_flags_must_agree(tmp_path, names, capsys):
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), "-n", "0", *SMALL]) == 0
    capsys.readouterr()
    before = read_metrics(run)
    assert main(["train", "-i", str(names), "-o", str(run), *SMALL]) == 2
    assert "--resume" in _one_error_line(capsys)
    assert main(["train", "-o", str(run), *SMALL, "--lr", "0.5", "--resume"]) == 2
    assert "--lr 0.5 differs" in _one_error_line(capsys)
    assert read_metrics(run) == before
    # --steps may extend a finished run
    assert main(["train", "-o", str(run), *SMALL, "--steps", "40", "-n", "0", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert read_metrics(run)[-1]["step"] == 40


def test_ctrl_c_saves_and_resume_continues_bit_identically(tmp_path, names, capsys, monkeypatch):
    from tinylm.cli import neural

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "-i", str(names), "-o", str(straight), "-n", "2", *SMALL]) == 0
    original = neural._Reporter.__call__

    def interrupt(self, record):
        original(self, record)
        if record.get("loss") is not None and record["step"] == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(neural._Reporter, "__call__", interrupt)
    assert main(["train", "-i", str(names), "-o", str(stopped), "-n", "2", *SMALL]) == 130
    err = capsys.readouterr().err
    assert "checkpoint saved in" in err and "--resume" in err and "step 17" in err
    monkeypatch.setattr(neural._Reporter, "__call__", original)
    assert main(["train", "-o", str(stopped), "-n", "2", "--model", "mlp", "--resume"]) == 0
    assert (straight / "metrics.jsonl").read_text() == (stopped / "metrics.jsonl").read_text()
    assert (straight / "samples.txt").read_text() == (stopped / "samples.txt").read_text()
    with np.load(straight / "checkpoint.npz") as a, np.load(stopped / "checkpoint.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_the_three_large_implementations_agree_on_the_classic_recipe(tmp_path):
    """300 steps of mlp-classic on the real split: same metrics to 1e-5, same sample.txt."""
    pytest.importorskip("torch")
    runs = {}
    for backend in ("numpy", "torch", "torch-module"):
        run = tmp_path / backend
        assert main(["train", "--recipe", "mlp-classic", "--model", "mlp", "--steps", "300",
                     "--backend", backend, "-n", "0", "-o", str(run)]) == 0
        runs[backend] = run
    reference = read_metrics(runs["numpy"])
    assert [r["step"] for r in reference if "val_loss" in r] == [0, 200, 299]
    assert reference[-1]["test_loss"] < 2.45
    for backend in ("torch", "torch-module"):
        metrics = read_metrics(runs[backend])
        assert len(metrics) == len(reference)
        for a, b in zip(reference, metrics):
            assert a.keys() == b.keys()
            for key in a:
                assert abs(a[key] - b[key]) <= 1e-5, (backend, a, b)
        assert (runs[backend] / "sample.txt").read_text() == (runs["numpy"] / "sample.txt").read_text()
    sample = (runs["numpy"] / "sample.txt").read_text()
    assert sample.startswith("\nrichard") and len(sample) == len("\nrichard") + 200 + 1
