"""The tinylm command line through main(argv): n-gram runs, and bad input of every kind.

Bad input must give exit code 2, exactly one line on stderr naming the
problem, no traceback, and nothing written into the out-dir.
"""

import json

import pytest

from tinylm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_sample_eval_ngram(tmp_path, small_input, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "-i", str(small_input), "-o", str(out_dir), "-n", "4")
    assert code == 0, err
    assert "grid search, val loss" in out and "test loss" in out
    for name in ("config.json", "model.npz", "metrics.jsonl", "grid.jsonl", "bigram.png", "samples.txt",
                 "train.txt", "val.txt", "test.txt"):
        assert (out_dir / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "train_loss", "val_loss"} <= records[0].keys()
    assert {"test_loss", "test_perplexity"} <= records[-1].keys()
    grid = [json.loads(line) for line in (out_dir / "grid.jsonl").read_text().splitlines()]
    assert len(grid) == 30
    assert (out_dir / "bigram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"] == "ngram" and config["vocab"][0] == "\n"

    code, out, _ = run(capsys, "sample", "-o", str(out_dir), "-n", "3", "--prompt", "a")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 3 and all(line.strip().startswith("a") for line in lines)
    assert all(line.endswith("(new)") or line.endswith("(copy of a training item)") for line in lines)

    small_input.unlink()  # eval and sample need only the run directory
    code, out, _ = run(capsys, "eval", "-o", str(out_dir))
    assert code == 0 and "test: loss" in out


def test_sampling_is_reproducible(tmp_path, small_input, capsys):
    run(capsys, "train", "-i", str(small_input), "-o", str(tmp_path / "run"), "--order", "2", "-n", "0")
    first = run(capsys, "sample", "-o", str(tmp_path / "run"), "-n", "5", "--seed", "7")[1]
    second = run(capsys, "sample", "-o", str(tmp_path / "run"), "-n", "5", "--seed", "7")[1]
    assert first == second


def test_reference_figure_through_the_cli(tmp_path, capsys):
    code, out, _ = run(capsys, "train", "-o", str(tmp_path), "--loader", "stream", "--order", "4",
                       "--smoothing", "0.1", "-n", "0")
    assert code == 0
    assert "test loss 2.1064, perplexity 8.218" in out


def test_kneser_ney_reports_its_margin(tmp_path, small_input, capsys):
    code, out, _ = run(capsys, "train", "-i", str(small_input), "-o", str(tmp_path / "run"),
                       "--method", "kneser-ney", "-n", "0")
    assert code == 0 and "Kneser-Ney beats the best additive model" in out


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--order" in capsys.readouterr().out
    assert main(["--version"]) == 0


def bad(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


BAD_INPUTS = {
    "missing": (lambda p: str(p / "nope.txt"), "does not exist"),
    "directory": (lambda p: str(p), "is a directory"),
    "empty": (lambda p: bad(p, "e.txt", b""), "is empty"),
    "blank": (lambda p: bad(p, "b.txt", b"\n \n\r\n"), "no non-blank lines"),
    "not utf-8": (lambda p: bad(p, "l.txt", b"ok\n\xff\xfe\n"), "not UTF-8: byte 0xff at line 2, column 1"),
    "control": (lambda p: bad(p, "c.txt", b"ok\nb\x1bad\n"), "line 2 contains the control character U+001B"),
    "nul": (lambda p: bad(p, "n.txt", b"ok\nb\x00d\n"), "line 2 contains a NUL byte"),
    "too few": (lambda p: bad(p, "f.txt", b"a\nb\nc\n"), "has 3 non-blank lines; at least 10"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_files(tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "train", "-i", make(data_dir), "-o", str(out_dir))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tinylm: error: ") and message in err
    assert "Traceback" not in err
    assert not out_dir.exists()


@pytest.mark.parametrize("argv, message", [
    (["--order", "0"], "--order: must be a positive whole number, got 0"),
    (["--order", "-2"], "--order: must be a positive whole number, got -2"),
    (["--order", "x"], "--order: expected a positive whole number, got 'x'"),
    (["--smoothing", "0"], "--smoothing: must be a positive finite number"),
    (["--smoothing", "nan"], "--smoothing: must be a positive finite number"),
    (["--model", "gpt"], "argument --model: invalid choice: 'gpt'"),
    (["--loader", "lines"], "argument --loader: invalid choice"),
    (["--method", "kneser-ney", "--smoothing", "0.1"], "Kneser-Ney estimates its discounts"),
    (["--order", "40"], "choose a smaller --order"),
])
def test_bad_flags(tmp_path, small_input, capsys, argv, message):
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "train", "-i", str(small_input), "-o", str(out_dir), *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out_dir.exists()


def test_out_dir_that_is_a_file(tmp_path, small_input, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, _, err = run(capsys, "train", "-i", str(small_input), "-o", str(target))
    assert code == 2 and "exists and is not a directory" in err and err.count("\n") == 1
    assert target.read_text() == "keep me"


def test_sample_and_eval_need_a_run_directory(tmp_path, capsys):
    code, _, err = run(capsys, "sample", "-o", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "eval", "-o", str(tmp_path))
    assert code == 2 and "manifest.json not found" in err


def test_tampered_ngram_model_is_refused(tmp_path, small_input, capsys):
    run(capsys, "train", "-i", str(small_input), "-o", str(tmp_path / "run"), "--order", "2", "-n", "0")
    blob = (tmp_path / "run" / "model.npz").read_bytes()
    (tmp_path / "run" / "model.npz").write_bytes(blob[: len(blob) // 2])
    code, _, err = run(capsys, "sample", "-o", str(tmp_path / "run"))
    assert code == 2 and "truncated or was modified" in err and err.count("\n") == 1


def test_bad_prompt_is_one_line(tmp_path, small_input, capsys):
    run(capsys, "train", "-i", str(small_input), "-o", str(tmp_path / "run"), "--order", "2", "-n", "0")
    code, _, err = run(capsys, "sample", "-o", str(tmp_path / "run"), "--prompt", "xyz")
    assert code == 2 and "'x' is not in the vocabulary" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--steps", "10"], "--steps does not apply to --model ngram"),
    (["--recipe", "mlp-classic", "--model", "ngram"], "--recipe does not apply to --model ngram"),
    (["--model", "mlp", "--order", "3"], "--order does not apply to --model mlp"),
    (["--model", "mlp", "--method", "kneser-ney"], "--method does not apply to --model mlp"),
])
def test_flags_of_the_other_model_family_are_refused(tmp_path, small_input, capsys, argv, message):
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "train", "-i", str(small_input), "-o", str(out_dir), *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out_dir.exists()


def test_a_recipe_chooses_its_model(tmp_path, capsys):
    code, out, err = run(capsys, "train", "--recipe", "mlp-classic", "--steps", "2", "--eval-every", "1",
                         "-o", str(tmp_path), "-n", "0")
    assert code == 0, err
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "mlp"


def test_a_closed_pipe_ends_quietly(tmp_path, small_input, capsys):
    """`tinylm sample | head -1`: no traceback when the reader goes away."""
    import subprocess
    import sys

    run(capsys, "train", "-i", str(small_input), "-o", str(tmp_path / "run"), "--order", "2", "-n", "0")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from tinylm.cli import main; sys.exit(main())",
                             "sample", "-o", str(tmp_path / "run"), "-n", "20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"samples")
    assert "Traceback" not in err and err == ""
    assert proc.returncode == 141
