"""``--ema``: the average of the weights (tinylm.averaging), what the trainer evaluates with
it, keeps and saves, and that a run with it resumes bit for bit on every backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_cli_neural import read_metrics
from test_train import SMALL, _interrupt_at, assert_same_run, finish, interrupted, make_trainer
from tinylm.averaging import WeightAverage
from tinylm.cli import main
from tinylm.errors import CheckpointError
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG
from tinylm.runs import open_run
from tinylm.train import evaluate
from tinylm.train_state import decode

BACKENDS = ["numpy", "torch", "torch-module", "micrograd"]


def small_model(backend):
    if backend in ("torch", "torch-module"):
        pytest.importorskip("torch")
    if backend == "micrograd":
        config = ModelConfig("mlp", vocab_size=5, context=2, n_embd=2, n_hidden=3)
    else:
        config = ModelConfig("gru", vocab_size=7, block_size=4, n_embd=3, n_embd2=5)
    return build_model(config, backend, RNG(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_average_is_the_decayed_mean_of_the_weights_visited(backend):
    """After t updates each weight is sum_i d**(t-i) w_i / sum_i d**(t-i), i = 1..t: the slow,
    obvious sum, against the running interpolation."""
    decay = 0.7
    model = small_model(backend)
    initial = model.state_dict()
    average = WeightAverage(model, decay)
    got = average.state_dict()
    assert got.keys() == initial.keys()  # before any update: the weights themselves
    assert all(np.array_equal(got[k], initial[k]) for k in got)
    rs = np.random.RandomState(0)
    visited = []
    for t in range(1, 7):
        weights = {k: rs.randn(*v.shape).astype(v.dtype) for k, v in initial.items()}
        model.load_state_dict(weights)
        average.update()
        visited.append(weights)
        factors = [decay ** (t - i) for i in range(1, t + 1)]
        for name in initial:
            expected = sum(f * w[name].astype(np.float64) for f, w in zip(factors, visited))
            expected /= sum(factors)
            assert np.allclose(average.state_dict()[name], expected, rtol=1e-5, atol=1e-6), \
                (t, name)
    assert average.updates == 6
    assert np.array_equal(average.state_dict()[name], average.state_dict()[name])
    # reading the average neither moves it nor hands out the arrays it goes on updating
    read = average.state_dict()
    read[name] += 1
    assert not np.array_equal(read[name], average.state_dict()[name])


def test_the_average_refuses_a_decay_outside_zero_to_one():
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            WeightAverage(small_model("numpy"), decay)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_saved_average_loads_back_and_a_misfit_is_refused(backend):
    model = small_model(backend)
    average = WeightAverage(model, 0.9)
    state = {k: v + 1 for k, v in average.state_dict().items()}
    buffers = {"not.a.parameter": np.zeros(2)}  # a checkpoint's average holds buffers too
    other = WeightAverage(small_model(backend), 0.9)
    other.load_state_dict({**state, **buffers}, updates=12)
    assert other.updates == 12
    assert all(np.array_equal(other.state_dict()[k], state[k]) for k in state)
    name = next(iter(state))
    with pytest.raises(CheckpointError, match=f"lacks '{name}'"):
        other.load_state_dict({k: v for k, v in state.items() if k != name}, updates=1)
    with pytest.raises(CheckpointError, match="holds -1 updates"):
        other.load_state_dict(state, updates=-1)
    with pytest.raises(CheckpointError, match="has shape"):
        other.load_state_dict({**state, name: np.zeros((9, 9))}, updates=1)


EMA = dict(SMALL, ema=0.8, lr_schedule="constant", lr=0.05)


def test_evaluations_and_the_test_measure_the_average(tmp_path):
    """A run's val record at step s (before update s) measures the average of s updates: the
    same as a run of s steps keeps; its test measures the average after the last update."""
    long, short = make_trainer(EMA), make_trainer(dict(EMA, steps=30))
    long_result, short_result = long.run(), short.run()
    assert not np.allclose(long.model.state_dict()["layers.0.weight"],
                           long.average.state_dict()["layers.0.weight"])  # the weights train on
    val_at_30 = next(r["val_loss"] for r in long_result.metrics if r.get("step") == 30
                     and "val_loss" in r)
    short.keep_weights()
    assert evaluate(short.model, short.splits["val"], 32) == pytest.approx(val_at_30, abs=1e-7)
    long.keep_weights()
    test = long_result.metrics[-1]["test_loss"]
    assert evaluate(long.model, long.splits["test"], 32) == pytest.approx(test, abs=1e-7)
    plain = make_trainer(dict(EMA, ema=0.0)).run()  # the same updates, measured without it
    assert plain.metrics[-1]["test_loss"] != pytest.approx(test, abs=1e-4)
    assert [r["loss"] for r in plain.metrics if "loss" in r] == \
        [r["loss"] for r in long_result.metrics if "loss" in r]


def test_keep_best_keeps_the_best_average(tmp_path):
    trainer = make_trainer(dict(EMA, keep="best", eval_every=5))
    result = trainer.run()
    final = result.metrics[-1]
    trainer.keep_weights()
    assert evaluate(trainer.model, trainer.splits["val"], 32) == pytest.approx(
        final["best_val_loss"], abs=1e-7)


@pytest.mark.parametrize("backend,keep", [("numpy", "last"), ("torch", "best"),
                                          ("torch-module", "last")])
def test_a_run_with_an_average_resumes_bit_identically(tmp_path, backend, keep):
    if backend != "numpy":
        pytest.importorskip("torch")
    config = dict(EMA, backend=backend, keep=keep)
    straight, split_run = tmp_path / "straight", tmp_path / "split"
    finish(make_trainer(config, straight))
    stopped = interrupted(make_trainer(config, split_run, progress=_interrupt_at(20)))
    assert stopped.step == 20 and open_run(split_run).manifest["state"]["average"] == \
        {"updates": 20}
    finish(make_trainer(config, split_run))
    assert_same_run(straight, split_run)
    a, b = open_run(straight).arrays["average"], open_run(split_run).arrays["average"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_backends_agree_with_an_average():
    pytest.importorskip("torch")
    results = {b: make_trainer(dict(EMA, backend=b)).run() for b in ("numpy", "torch")}
    for a, b in zip(results["numpy"].metrics, results["torch"].metrics):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_a_checkpoint_without_its_average_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    finish(make_trainer(EMA, run_dir))
    run = open_run(run_dir)
    state = dict(run.manifest["state"])
    arrays = {k: v for k, v in run.arrays.items() if k != "average"}
    with pytest.raises(CheckpointError, match="average of the weights is incomplete"):
        decode(state, arrays, run.metrics, 40)
    del state["average"]
    trainer = make_trainer(EMA)
    with pytest.raises(CheckpointError, match="holds no average"):
        trainer.restore(state, arrays, run.metrics)


def test_the_command_line_keeps_saves_and_reports_the_average(tmp_path, capsys):
    from test_cli_neural import SMALL as FLAGS

    run = tmp_path / "run"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["emma", "olivia", "ava", "isabella", "sophia", "mia"] * 6) + "\n")
    assert main(["train", "-i", str(names), "-o", str(run), *FLAGS, "--ema", "0.9",
                 "-n", "3"]) == 0
    assert "s, the average of the weights: val loss" in capsys.readouterr().out
    final = read_metrics(run)[-1]
    opened = open_run(run)
    saved = opened.arrays
    kept = opened.model.state_dict()
    assert all(np.array_equal(kept[k], saved["average"][k]) for k in kept)
    assert not all(np.array_equal(kept[k], saved["model"][k]) for k in kept)
    assert main(["eval", "-o", str(run)]) == 0
    out = capsys.readouterr().out
    assert "the average of its weights" in out and f"{final['test_loss']:.4f}" in out
    assert json.loads((run / "config.json").read_text())["train_config"]["ema"] == 0.9
    # a resume continues the same average: its decay cannot change
    assert main(["train", "-o", str(run), "--resume", "--steps", "40", "--ema", "0.5"]) == 2
    assert "--ema" in capsys.readouterr().err
    assert main(["train", "-i", str(names), "-o", str(tmp_path / "r2"), *FLAGS,
                 "--ema", "1"]) == 2
    assert "--ema" in capsys.readouterr().err
