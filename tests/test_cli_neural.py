"""``tinylm train/sample/eval`` for neural models, end to end through ``main``."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from tinylm.cli import main
from tinylm.recipes import RECIPES

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


def test_warmup_sets_the_learning_rate_of_the_first_steps(tmp_path, names):
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), *SMALL, "--lr", "0.01",
                 "--lr-schedule", "constant", "--warmup", "4"]) == 0
    lrs = [r["lr"] for r in read_metrics(run) if "lr" in r]
    assert lrs[:5] == [pytest.approx(x) for x in (0.0025, 0.005, 0.0075, 0.01, 0.01)]
    assert json.loads((run / "config.json").read_text())["train_config"]["warmup"] == 4


KEEP_BEST = [*SMALL, "--steps", "60", "--eval-every", "5", "--lr", "0.5", "--lr-schedule",
             "constant", "--keep", "best", "-n", "3"]


def test_keep_best_tests_and_samples_the_weights_of_the_lowest_val_loss(tmp_path, names, capsys):
    from tinylm.runs import open_run
    from tinylm.train import evaluate

    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), *KEEP_BEST]) == 0
    records = read_metrics(run)
    vals = [(r["val_loss"], r["step"]) for r in records if "val_loss" in r]
    final = records[-1]
    assert (final["best_val_loss"], final["best_step"]) == min(vals)  # the first of equal lows
    assert final["best_step"] < 59  # this run's val loss rose again: the kept weights are older
    out = capsys.readouterr().out
    assert f"kept the weights of step {final['best_step']}" in out
    opened = open_run(run)  # tinylm sample and eval read the kept weights
    assert evaluate(opened.model, opened_split(opened, "val"), 32) == pytest.approx(
        final["best_val_loss"], abs=1e-6)
    assert evaluate(opened.model, opened_split(opened, "test"), 32) == pytest.approx(
        final["test_loss"], abs=1e-6)
    assert main(["eval", "-o", str(run)]) == 0
    assert f"kept weights of step {final['best_step']}" in capsys.readouterr().out
    with contextlib.nullcontext(load_file(run / "weights-000000060.safetensors")) as saved:
        # diagnose reads the last weights
        last = open_run(run, weights="last").model.state_dict()
        assert all(np.array_equal(last[k], saved[f"model/{k}"]) for k in last)
        kept = opened.model.state_dict()
        assert all(np.array_equal(kept[k], saved[f"best/{k}"]) for k in kept)
        assert not all(np.array_equal(kept[k], last[k]) for k in kept)


def opened_split(run, name):
    from tinylm.batches import split_for
    from tinylm.data import SPLIT_NAMES, Items

    lines = dict(zip(SPLIT_NAMES, run.lines3))[name]
    return split_for(name, Items(lines, run.tokenizer), run.model_config, run.config.loader)


def test_keep_best_resumes_bit_identically(tmp_path, names, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "-i", str(names), "-o", str(straight), *KEEP_BEST]) == 0
    with interrupted_at(monkeypatch, 37):
        assert main(["train", "-i", str(names), "-o", str(stopped), *KEEP_BEST]) == 130
    assert "best" in json.loads((stopped / "manifest.json").read_text())["state"]
    assert main(["train", "-o", str(stopped), "-n", "3", "--resume"]) == 0
    for name in ("metrics.jsonl", "samples.txt", "weights-000000060.safetensors"):
        assert (straight / name).read_bytes() == (stopped / name).read_bytes(), name


def test_train_sample_eval(tmp_path, names, capsys):
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), "-n", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "training mlp (numpy" in out and "test loss" in out
    assert "(new)" in out or "(copy of a training item)" in out
    for name in ("manifest.json", "config.json", "weights-000000030.safetensors", "metrics.jsonl",
                 "samples.txt", "train.txt", "val.txt", "test.txt"):
        assert (run / name).is_file(), name
    assert len(list(run.glob("weights-*"))) == 1
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


@contextlib.contextmanager
def interrupted_at(monkeypatch, step: int):
    """Within the block, a training run gets Ctrl-C right after the update of ``step``."""
    from tinylm import neural_run as neural

    original = neural._Reporter.__call__

    def interrupt(self, record):
        original(self, record)
        if record.get("loss") is not None and record["step"] == step:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(neural._Reporter, "__call__", interrupt)
        yield


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
    (["--resume"], "does not exist"),
    (["--backend", "micrograd", "--context", "0"], "--context"),
    (["--model", "bnmlp", "--batch-size", "1"], "BatchNorm1d"),
    (["--batch-size", "10000000"], "is larger than the train split"),
    (["--lr", "nan"], "--lr"),
    (["--threads", "-1"], "--threads"),
    (["--steps", "30", "--warmup", "30"], "warmup"),
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
    blob = (run / "weights-000000030.safetensors").read_bytes()
    (run / "weights-000000030.safetensors").write_bytes(blob[:-10])
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
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "-i", str(names), "-o", str(straight), "-n", "2", *SMALL]) == 0
    with interrupted_at(monkeypatch, 16):
        assert main(["train", "-i", str(names), "-o", str(stopped), "-n", "2", *SMALL]) == 130
    err = capsys.readouterr().err
    assert "checkpoint saved in" in err and "--resume" in err and "step 17" in err
    assert main(["train", "-o", str(stopped), "-n", "2", "--model", "mlp", "--resume"]) == 0
    assert (straight / "metrics.jsonl").read_text() == (stopped / "metrics.jsonl").read_text()
    assert (straight / "samples.txt").read_text() == (stopped / "samples.txt").read_text()
    # the same arrays are the same bytes (a safetensors file carries no write time)
    assert (straight / "weights-000000030.safetensors").read_bytes() == \
        (stopped / "weights-000000030.safetensors").read_bytes()


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


# --- settings from one declaration ---------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--model", "mlp", "--n-layers", "3"], "--n-layers does not apply to --model mlp (it is read by bnmlp, transformer)"),
    (["--model", "wavenet", "--n-layers", "3"], "--n-layers does not apply to --model wavenet"),
    (["--model", "bigram", "--n-hidden", "8"], "--n-hidden does not apply to --model bigram"),
    (["--model", "bigram", "--n-embd", "8"], "--n-embd does not apply to --model bigram"),
    (["--model", "mlp", "--reg", "0.1"], "--reg does not apply to --model mlp (it is read by bigram)"),
    (["--model", "mlp", "--init", "naive"], "--init does not apply to --model mlp"),
    (["--recipe", "mlp-classic", "--model", "bnmlp"], "--model bnmlp differs from the model of --recipe"),
    (["--input", "x.txt", "--train", "y.txt"], "-i/--input and --train exclude each other"),
    (["--val", "x.txt"], "--val and --test need --train"),
])
def test_a_flag_the_model_does_not_read_is_refused(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), *flags]) == 2
    assert message in _one_error_line(capsys)
    assert not run.exists()


def test_the_bigram_penalty_can_be_set(tmp_path, names, capsys):
    runs = {}
    for reg in ("0", "1"):
        run = tmp_path / f"reg{reg}"
        assert main(["train", "-i", str(names), "-o", str(run), "--model", "bigram", "--reg", reg,
                     "--steps", "5", "-n", "0"]) == 0
        runs[reg] = read_metrics(run)
        assert json.loads((run / "config.json").read_text())["model_config"]["reg"] == float(reg)
    # the penalty is part of the training loss only: the batch losses differ at the first step
    assert runs["1"][1]["loss"] > runs["0"][1]["loss"]


def test_help_shows_every_default_and_each_models_own(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("--lr X (peak) learning rate (default: 0.01; bigram: 50; bnmlp, wavenet: 0.1; "
            "transformer, rnn, gru: 0.0005)") in text
    assert ("--n-layers N hidden layers of the deep MLP, blocks of the transformer (default: 1; "
            "bnmlp: 5; transformer: 4)") in text
    assert ("--eval-train-batches N --format lines: batches of the train split to estimate its "
            "loss on (default: all of it up to 262,144 targets") in text
    assert "(default: bounded)" not in text  # a help that says its default is not noted twice
    assert "mlp-classic: the MLP of Bengio et al. 2003" in text
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 20)" in text and "(default: 42)" in text and "(default: 1)" in text


@pytest.mark.parametrize("command", ["train", "micrograd"])
def test_help_is_wrapped_at_spaces_only(capsys, monkeypatch, command):
    """On a narrow terminal the help wraps at spaces: no line ends cutting a word at its
    hyphen (micrograd's own formatter, which adds the defaults, too), and every recipe's
    name (mlp-classic, gru-makemore) stays whole."""
    monkeypatch.setenv("COLUMNS", "50")
    assert main([command, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if re.search(r"\w-$", line)] == []
    if command == "train":
        for name in RECIPES:
            assert any(f"{name}: " in line for line in lines), name
    else:
        assert "(default: 42)" in " ".join(lines)  # the defaults are still added


def test_recipes_lists_what_each_recipe_sets(capsys):
    assert main(["recipes", "mlp-classic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlp-classic: ")
    assert "--loader stream --seed 1337" in out and "--eval-train-batches 20" in out
    assert "--sample-prompt '\\nrichard'" in out
    assert main(["recipes"]) == 0
    from tinylm.recipes import RECIPES
    listed = capsys.readouterr().out
    assert listed.count("--model") == len(RECIPES) == 6
    assert all(listed.count(f"\n{name}: ") + listed.startswith(f"{name}: ") == 1
               for name in RECIPES)


def test_files_already_split(tmp_path, names, capsys):
    lines = names.read_text().split()
    (tmp_path / "tr.txt").write_text("\n".join(lines[:30]))
    (tmp_path / "va.txt").write_text("\n".join(["zoe", "zara"]))
    (tmp_path / "te.txt").write_text("\n".join(["yan"]))
    run = tmp_path / "run"
    assert main(["train", "--train", str(tmp_path / "tr.txt"), "--val", str(tmp_path / "va.txt"),
                 "--test", str(tmp_path / "te.txt"), "-o", str(run), "-n", "0", *SMALL]) == 0
    assert (run / "val.txt").read_text() == "zoe\nzara\n" and (run / "test.txt").read_text() == "yan\n"
    assert (run / "train.txt").read_text().split() == lines[:30]
    vocab = json.loads((run / "config.json").read_text())["vocab"]
    assert {"z", "y"} <= set(vocab)  # val and test characters are in the vocabulary
    # a missing test split is split off the train file
    run2 = tmp_path / "run2"
    assert main(["train", "--train", str(tmp_path / "tr.txt"), "--val", str(tmp_path / "va.txt"),
                 "-o", str(run2), "-n", "0", *SMALL]) == 0
    train2, test2 = ((run2 / f"{n}.txt").read_text().split() for n in ("train", "test"))
    assert len(test2) == 3 and sorted(train2 + test2) == sorted(lines[:30])


def test_a_run_saves_its_thread_count_and_a_resume_keeps_it(tmp_path, names, capsys,
                                                            monkeypatch):
    """BLAS rounds differently with another thread count: a resumed run computes with the
    count the run started with, whatever the environment says then; --threads may change
    it, with a warning that the numbers will not be those of an uninterrupted run."""
    from tinylm import threads
    from tinylm import neural_run as neural

    for name in threads.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    used = []
    limited = threads.limited
    monkeypatch.setattr(neural.threads, "limited",
                        lambda n: (used.append(threads.effective(n)), limited(n))[1])
    run = tmp_path / "run"
    args = ["-i", str(names), "-o", str(run), *SMALL, "--steps", "4", "-n", "0"]
    assert main(["train", *args]) == 0
    assert json.loads((run / "config.json").read_text())["train_config"]["threads"] == 1
    assert used == [1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(["train", "-o", str(run), "--resume", "--steps", "6", "-n", "0"]) == 0
    assert used == [1, 1] and "warning" not in capsys.readouterr().err
    assert main(["train", "-o", str(run), "--resume", "--steps", "8", "-n", "0",
                 "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert used[-1] == 2 and "computed with 1 thread; with 2" in err
    assert json.loads((run / "config.json").read_text())["train_config"]["threads"] == 2


def test_resume_needs_no_model_and_refuses_fewer_steps(tmp_path, names, capsys):
    run = tmp_path / "run"
    bigram = ["--model", "bigram", "--steps", "6", "--eval-every", "3", "-n", "0"]
    assert main(["train", "-i", str(names), "-o", str(run), *bigram]) == 0
    capsys.readouterr()
    assert main(["train", "-o", str(run), "--resume", "--steps", "4"]) == 2
    assert "--steps 4 is fewer than the 6 steps this run has done" in _one_error_line(capsys)
    assert main(["train", "-o", str(run), "--resume", "--model", "mlp"]) == 2
    assert "--model mlp differs from the run being resumed (bigram)" in _one_error_line(capsys)
    assert main(["train", "-o", str(run), "--resume", "--steps", "9", "-n", "0"]) == 0
    assert "resuming bigram (numpy, 324 parameters) at step 6 of 9" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train_config"]["steps"] == 9


def test_parameter_counts_leave_out_batchnorm_statistics(tmp_path, names, capsys):
    assert main(["train", "-i", str(names), "-o", str(tmp_path / "bn"), "--model", "bnmlp",
                 "--n-layers", "2", "--n-hidden", "10", "--steps", "2", "-n", "0"]) == 0
    out = capsys.readouterr().out
    V, E, T, H = 18, 10, 3, 10  # 17 letters of the names and the end-of-text token
    weights = V * E + T * E * H + 2 * H + H * H + 2 * H + H * V + V
    assert f"bnmlp (numpy, {weights:,} parameters)" in out


def test_a_log_without_a_terminal_hears_from_the_run_between_evaluations(tmp_path, names, capsys,
                                                                         monkeypatch):
    from tinylm import neural_run as neural

    monkeypatch.setattr(neural, "QUIET_SECONDS", 0.0)
    assert main(["train", "-i", str(names), "-o", str(tmp_path / "r"), "-n", "0", *SMALL]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [l for l in lines if l.startswith("step ") and "val" not in l]
    assert len(progress) >= 25 and "batch loss" in progress[-1] and "steps/s" in progress[-1]


def test_a_neural_run_draws_its_loss_curve(tmp_path, names, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert main(["train", "-i", str(names), "-o", str(run), "-n", "0", *SMALL]) == 0
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "loss.png" in capsys.readouterr().out


def test_sigterm_before_the_training_loop_is_one_line_and_143(tmp_path, names):
    """Between the step-0 commit and the loop no trainer defers SIGTERM: the CLI still ends cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", "import sys; from tinylm.cli import main; "
                          "sys.exit(main())", "train", "-i", str(names), "-o", str(run), *SMALL,
                          "--steps", "100000", "-n", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "manifest.json").exists() and p.poll() is None:
        time.sleep(0.0005)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143
    assert len(err.strip().splitlines()) == 1 and "SIGTERM" in err
    assert main(["eval", "-o", str(run)]) == 0  # the committed state is whole


# --- sequence models: a prediction at every position ----------------------------------------

# dropout in two of them: its masks come from the run's RNG, the same on every backend
SEQ = {"transformer": ["--model", "transformer", "--n-embd", "16", "--n-layers", "2",
                       "--n-heads", "2", "--dropout", "0.2"],
       "rnn": ["--model", "rnn", "--n-embd", "8", "--n-embd2", "16"],
       "gru": ["--model", "gru", "--n-embd", "8", "--n-embd2", "16", "--dropout", "0.1"]}
SEQ_RUN = ["--steps", "20", "--eval-every", "10", "--batch-size", "8", "--lr", "0.01"]


@pytest.mark.parametrize("model", list(SEQ))
def test_sequence_models_train_sample_eval_and_resume_bit_identically(tmp_path, names, capsys,
                                                                      monkeypatch, model):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    args = ["-i", str(names), *SEQ[model], *SEQ_RUN, "-n", "3"]
    assert main(["train", "-o", str(straight), *args]) == 0
    out = capsys.readouterr().out
    assert f"training {model} (numpy" in out and ("(new)" in out or "(copy" in out)
    config = json.loads((straight / "config.json").read_text())
    assert config["model_config"]["block_size"] == max(map(len, names.read_text().split())) + 1
    final = read_metrics(straight)[-1]
    assert final["step"] == 20 and final["test_loss"] < 3.0  # below ln(V) = 2.89 + margin
    assert main(["eval", "-o", str(straight)]) == 0
    assert f"{final['test_loss']:.4f}" in capsys.readouterr().out
    assert main(["sample", "-o", str(straight), "-n", "4", "--prompt", "em"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("  ")]
    assert len(lines) == 4 and all(l.strip().startswith("em") for l in lines)
    with interrupted_at(monkeypatch, 12):
        assert main(["train", "-o", str(halves), *args]) == 130
    assert main(["train", "-o", str(halves), "--resume", "-n", "3"]) == 0
    assert (straight / "metrics.jsonl").read_text() == (halves / "metrics.jsonl").read_text()
    assert (straight / "weights-000000020.safetensors").read_bytes() == \
        (halves / "weights-000000020.safetensors").read_bytes()


@pytest.mark.parametrize("model", list(SEQ))
def test_sequence_models_compute_the_same_numbers_on_every_backend(tmp_path, names, model):
    """numpy (hand-written backward), raw torch and torch.nn: the same weights at the start,
    every metric record within 1e-5, and the same sampled text."""
    pytest.importorskip("torch")
    runs = {}
    for backend in ("numpy", "torch", "torch-module"):
        runs[backend] = tmp_path / backend
        assert main(["train", "-i", str(names), "-o", str(runs[backend]), *SEQ[model], *SEQ_RUN,
                     "--backend", backend, "--sample-tokens", "40", "-n", "0"]) == 0
    reference = read_metrics(runs["numpy"])
    for backend in ("torch", "torch-module"):
        metrics = read_metrics(runs[backend])
        assert len(metrics) == len(reference)
        for a, b in zip(reference, metrics):
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a), (a, b)
        assert (runs[backend] / "sample.txt").read_text() == (runs["numpy"] / "sample.txt").read_text()


def test_sequence_models_on_the_stream_loader_and_their_refusals(tmp_path, names, capsys):
    run = tmp_path / "stream"
    assert main(["train", "-i", str(names), "-o", str(run), *SEQ["transformer"], *SEQ_RUN,
                 "--loader", "stream", "--block-size", "6", "-n", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["model_config"]["block_size"] == 6
    capsys.readouterr()
    assert main(["train", "-i", str(names), "-o", str(tmp_path / "d"), *SEQ["gru"], *SEQ_RUN,
                 "--diagnose-every", "5"]) == 2
    assert "--diagnose-every is not available for the gru model" in _one_error_line(capsys)
    assert main(["train", "-i", str(names), "-o", str(tmp_path / "h"), *SEQ["transformer"],
                 "--n-heads", "3", *SEQ_RUN]) == 2
    assert "n_embd 16 is not a multiple of n_head 3" in _one_error_line(capsys)
    assert main(["diagnose", "-o", str(run)]) == 2
    assert "not available for the transformer model" in _one_error_line(capsys)
    assert not (tmp_path / "d").exists() and not (tmp_path / "h").exists()
