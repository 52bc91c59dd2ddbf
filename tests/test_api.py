"""The Python API: tinylm.train and tinylm.load, tested as the command line is."""

from __future__ import annotations

import json

import pytest

import tinylm
from tinylm.cli import main
from tinylm.errors import CheckpointError, ConfigError, DataError
from tinylm.output import Output

SMALL = dict(model="mlp", context=3, n_embd=4, n_hidden=16, steps=30, eval_every=10,
             batch_size=32)


def test_a_notebook_trains_samples_evaluates_and_resumes_in_five_lines(tmp_path, few_names):
    run = tinylm.train(input=few_names, out_dir=tmp_path / "r", quiet=True, **SMALL)
    samples = run.sample(n=5, prompt="a", temperature=0.8)
    losses = run.evaluate()
    run = tinylm.train(out_dir=tmp_path / "r", resume=True, steps=40, quiet=True)
    assert tinylm.load(tmp_path / "r").step == 40 == run.step
    assert len(samples) == 5 and all(s.text.startswith("a") for s in samples)
    assert set(losses) == {"train", "val", "test"}
    tested = [r for r in run.metrics if "test_loss" in r]
    assert [r["step"] for r in tested] == [40]  # the extended run's test replaced the first
    first = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text()
             .splitlines()][:31]
    assert first == run.metrics[:31]  # the resumed run kept its first 30 steps' records


def test_the_api_computes_what_the_command_line_computes(tmp_path, few_names, capsys):
    flags = ["--model", "mlp", "--context", "3", "--n-embd", "4", "--n-hidden", "16", "--steps",
             "30", "--eval-every", "10", "--batch-size", "32"]
    assert main(["train", "-i", str(few_names), "-o", str(tmp_path / "cli"), *flags]) == 0
    run = tinylm.train(input=few_names, out_dir=tmp_path / "api", quiet=True, **SMALL)
    cli = tinylm.load(tmp_path / "cli")
    assert run.metrics == cli.metrics
    assert run.config == cli.config and run.config["n_hidden"] == 16
    capsys.readouterr()
    assert main(["sample", "-o", str(tmp_path / "cli"), "-n", "4", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()[1:]]
    for sample, row in zip(run.sample(n=4, seed=7), rows):
        # new means: in no line of the training split, as the command line marks it
        assert row[0] == sample.text
        assert row[1] == ("(new)" if sample.new else "(copy")


def test_errors_are_exceptions_with_the_command_lines_messages(tmp_path, few_names, capsys):
    with pytest.raises(ConfigError) as err:
        tinylm.train(input=few_names, out_dir=tmp_path / "a", quiet=True,
                     **{**SMALL, "batch_size": 10**7})
    assert main(["train", "-i", str(few_names), "-o", str(tmp_path / "b"), "--model", "mlp",
                 "--batch-size", str(10**7)]) == 2
    assert capsys.readouterr().err == f"tinylm: error: {err.value}\n"
    with pytest.raises(ConfigError, match="lr must be a positive finite number, got -1"):
        tinylm.train(input=few_names, out_dir=tmp_path / "a", quiet=True, **{**SMALL, "lr": -1})
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        tinylm.train(input=few_names, out_dir=tmp_path / "c", colour="red")
    with pytest.raises(ConfigError, match="--n-layers"):
        tinylm.train(input=few_names, out_dir=tmp_path / "d", model="mlp", n_layers=3)
    with pytest.raises(DataError, match="does not exist"):
        tinylm.train(input=tmp_path / "nope.txt", out_dir=tmp_path / "e")
    with pytest.raises(CheckpointError, match="does not exist"):
        tinylm.load(tmp_path / "nowhere")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_a_sequence_model_needs_no_block_size_by_hand(tmp_path, few_names):
    run = tinylm.train(input=few_names, out_dir=tmp_path / "g", model="gru", n_embd=8,
                       n_embd2=8, steps=5, eval_every=5, quiet=True)
    longest = max(len(line) for line in few_names.read_text().split())
    assert run.config["block_size"] == longest + 1


def test_a_text_run_samples_a_passage(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("def f(x):\n\treturn x\n\n" * 50)
    run = tinylm.train(input=doc, format="text", out_dir=tmp_path / "t", model="transformer",
                       n_embd=8, n_layers=1, n_heads=2, block_size=16, steps=3, quiet=True)
    passage = run.sample(tokens=120, prompt="def ")
    assert isinstance(passage, str) and passage.startswith("def ") and len(passage) == 124
    assert run.format == "text" and len(run.sample()) == 500


def test_progress_and_lines_go_where_the_output_says(tmp_path, few_names):
    said, warned = [], []
    tinylm.train(input=few_names, out_dir=tmp_path / "o", output=Output(said.append,
                                                                     warned.append), **SMALL)
    assert said[0].startswith("training mlp (numpy") and any("val" in line for line in said)
    assert any(line.startswith("done in") for line in said)
    quiet = []
    tinylm.train(input=few_names, out_dir=tmp_path / "q", quiet=True, **SMALL)
    assert quiet == []


def test_sample_eval_and_diagnose_name_their_run_directory_as_report_and_serve_do(
        tmp_path, few_names, capsys):
    run = tmp_path / "r"
    tinylm.train(input=few_names, out_dir=run, quiet=True, **SMALL)
    assert main(["sample", str(run), "-n", "2"]) == 0
    positional = capsys.readouterr().out
    assert main(["sample", "-o", str(run), "-n", "2"]) == 0  # -o stays an alias
    assert capsys.readouterr().out == positional
    assert main(["eval", str(run)]) == 0 and "test: loss" in capsys.readouterr().out
    assert main(["sample"]) == 2
    assert "no run directory given" in capsys.readouterr().err
    assert main(["sample", str(run), "-o", str(tmp_path / "other")]) == 2
    assert "two run directories given" in capsys.readouterr().err


def test_more_threads_than_cores_are_refused(tmp_path, few_names):
    import os

    with pytest.raises(ConfigError, match=f"more than this machine's {os.cpu_count()} cores"):
        tinylm.train(input=few_names, out_dir=tmp_path / "t", quiet=True,
                     **{**SMALL, "threads": (os.cpu_count() or 1) + 1})
    assert not (tmp_path / "t").exists()


def test_a_recipe_shortened_with_steps_scales_its_warmup():
    from tinylm import runs
    from tinylm.recipes import RECIPES

    full = RECIPES["best"].settings
    _, config = runs.resolve_configs(None, "best", {"steps": 300})
    assert config.warmup == round(full["warmup"] * 300 / full["steps"])
    _, config = runs.resolve_configs(None, "best", {"steps": 300, "warmup": 7})
    assert config.warmup == 7  # said explicitly: kept
    _, config = runs.resolve_configs(None, "best", {})
    assert config.warmup == full["warmup"]


def test_a_best_grid_point_on_the_edge_of_the_search_is_noted():
    from tinylm.ngram import GridPoint
    from tinylm.ngram_run import _note_edge

    said = []
    points = [GridPoint(o, "additive", a, 2.0, 3.0 - o / 10 - (a == 1.0) / 100)
              for o in (1, 2, 3) for a in (0.1, 1.0)]
    _note_edge(min(points, key=lambda p: p.val_loss), points, Output(said.append))
    assert said == ["note: the best order is the largest searched (3): a longer one may do "
                    "better (--order N)",
                    "note: the best smoothing is the largest searched (1): one beyond it may do "
                    "better (--smoothing A)"]
    said.clear()
    inner = [GridPoint(o, "kneser-ney", None, 2.0, abs(o - 2)) for o in (1, 2, 3)]
    _note_edge(min(inner, key=lambda p: p.val_loss), inner, Output(said.append))
    assert said == []
