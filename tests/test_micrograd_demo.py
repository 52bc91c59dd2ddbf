"""The reference demo recipe, its files, and the ``tinylm micrograd`` command."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys

import pytest

from tinylm.cli import main
from tinylm.errors import ConfigError
from tinylm.micrograd.demo import DemoConfig, mean_loss, point_graph_dot, run_demo, train
from tinylm.micrograd.nn import cross_entropy

# The reference recipe's figures on this platform; libm may move the last digits elsewhere.
FINAL_TRAIN_LOSS = 0.03906091113485321
LAST_VAL_LOSS = 0.07872357416386432
TEST_ACCURACY = 0.9


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``tinylm micrograd`` with default flags, run once for the tests below."""
    out = tmp_path_factory.mktemp("runs") / "micrograd"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["micrograd", "-o", str(out)])
    return code, out, stdout.getvalue(), stderr.getvalue()


def test_cli_writes_every_file(cli_run):
    code, out, stdout, stderr = cli_run
    assert code == 0 and stderr == ""
    for name in ("config.json", "metrics.jsonl", "regions.png", "graph.dot"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "regions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if shutil.which("dot"):
        assert (out / "graph.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg", b"<!DOCTYPE"))
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "micrograd" and config["hidden"] == [8] and config["steps"] == 100


def test_metrics_follow_the_recipe(cli_run):
    _, out, _, _ = cli_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    val_steps = [r["step"] for r in records if "val_loss" in r]
    assert train_steps == list(range(1, 101))
    assert val_steps == list(range(1, 101, 10))
    assert records[-1] == {"step": 100, "test_accuracy": pytest.approx(TEST_ACCURACY)}
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[0] > 1.0 and losses[-1] < 0.1
    assert losses[-1] == pytest.approx(FINAL_TRAIN_LOSS, rel=1e-6)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] == pytest.approx(LAST_VAL_LOSS, rel=1e-6) and val[-1] < val[0]


def test_cli_prints_losses_accuracy_and_files(cli_run):
    _, out, stdout, _ = cli_run
    lines = stdout.splitlines()
    assert lines[0].startswith("micrograd: yinyang (100 points), MLP(2, [8, 3]), 100 steps")
    assert [line.split()[1] for line in lines if line.startswith("step")] == [
        "1", "11", "21", "31", "41", "51", "61", "71", "81", "91", "100"
    ]
    assert "val loss" in lines[1]
    assert "test accuracy 90.0% (10 points)" in stdout
    assert f"to {out}/" in stdout


def test_graph_is_one_point_through_the_trained_model(cli_run):
    _, out, _, _ = cli_run
    dot = (out / "graph.dot").read_text()
    for name in ("{ x |", "{ y |", "L0N7.w1", "L1N2.b", "loss (class", "cross_entropy", "tanh"):
        assert name in dot
    assert dot.count("w·x+b") == 8 + 3


def test_train_is_deterministic_and_the_loss_goes_down():
    config = DemoConfig(steps=20)
    a, b = train(config), train(config)
    assert a.records == b.records
    losses = [loss for _, loss in a.losses("train_loss")]
    assert losses[-1] < 0.7 * losses[0]
    assert a.losses("val_loss")[0][0] == 1 and len(a.losses("val_loss")) == 2


@pytest.mark.parametrize("dataset", ["simple", "circles", "moons"])
def test_other_datasets_learn(dataset):
    trained = train(DemoConfig(dataset=dataset, points=60, steps=40, hidden=(8,)))
    losses = [loss for _, loss in trained.losses("train_loss")]
    assert losses[-1] < 0.5 * losses[0]
    assert trained.test_accuracy >= 0.5


def test_mean_loss_is_the_mean_of_the_point_losses():
    trained = train(DemoConfig(steps=1))
    split = trained.data.val
    loss = mean_loss(trained.model, split)
    each = [cross_entropy(trained.model(x), y).data for x, y in split]
    assert loss.data == pytest.approx(sum(each) / len(each), rel=1e-12)


def test_point_graph_shows_this_points_gradients_only():
    trained = train(DemoConfig(steps=3))
    for p in trained.model.parameters():
        p.grad = 123.0
    point_graph_dot(trained.model, trained.data.test[0])
    assert all(p.grad != 123.0 for p in trained.model.parameters())


def test_without_graphviz_the_dot_file_is_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["micrograd", "--steps", "2", "-o", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "graph.dot").exists()
    assert not (tmp_path / "run" / "graph.svg").exists()
    assert "dot -Tsvg" in capsys.readouterr().out


def test_without_matplotlib_there_is_no_picture(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = run_demo(DemoConfig(steps=2), tmp_path / "run")
    assert result.regions_png is None
    assert not (tmp_path / "run" / "regions.png").exists()
    assert (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "steps must be a positive whole number, got 0"),
        (["--points", "5"], "points must be a whole number >= 10, got 5"),
        (["--hidden", "8", "0"], "hidden sizes must be one or more positive whole numbers"),
        (["--lr", "-0.1"], "lr must be a positive finite number"),
        (["--lr", "nan"], "lr must be a positive finite number"),
        (["--seed", "0"], "seed must be a whole number in [1, 2**64)"),
    ],
)
def test_bad_flag_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["micrograd", *flags, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"tinylm: error: {message}") and captured.err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--dataset", "spiral"], ["--steps", "many"], ["--hidden", "x"]])
def test_unparsable_flag_exits_2_with_one_line(tmp_path, capsys, flags):
    out = tmp_path / "run"
    assert main(["micrograd", *flags, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinylm micrograd: argument") and err.count("\n") == 1
    assert not out.exists()


def test_out_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["micrograd", "-o", str(blocker)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_config_validation_names_the_option():
    with pytest.raises(ConfigError, match="unknown dataset 'spiral'"):
        DemoConfig(dataset="spiral").validate()
    with pytest.raises(ConfigError, match="betas"):
        DemoConfig(betas=(0.9, 1.0)).validate()
    assert DemoConfig().layer_sizes == [8, 3]
    assert DemoConfig(dataset="moons", hidden=(16, 16)).layer_sizes == [16, 16, 2]


def test_help_explains_the_command(capsys):
    assert main(["micrograd", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--dataset", "--hidden", "--steps", "--lr", "--seed", "--out-dir", "graph.svg"):
        assert word in out


def test_the_demo_never_writes_into_a_trained_run_or_over_a_foreign_config(tmp_path, capsys):
    from tinylm.cli import main

    run = tmp_path / "run"
    assert main(["train", "--order", "2", "-n", "0", "-o", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["micrograd", "--steps", "1", "-o", str(run)]) == 2
    assert "holds a trained run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    assert main(["micrograd", "--steps", "1", "-o", str(mine)]) == 2
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
