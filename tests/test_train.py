"""The trainer: batches and evaluation protocols, bit-identical resume, Ctrl-C, backends."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import numpy as np
import pytest

from tinylm import data
from tinylm.batches import Batches, eval_batches, make_split
from tinylm.models import build_model
from tinylm.rng import RNG
from tinylm import settings
from tinylm.models import ModelConfig
from tinylm import runs
from tinylm.runs import open_run, resolve_configs
from tinylm.train import TrainConfig, Trainer, TrainingInterrupted, evaluate

LINES = data.read_lines(data.default_dataset())
SPLIT = data.split_lines(LINES, seed=42)
TOKENIZER = data.Tokenizer.from_lines(LINES)

# the settings of a small run, model and training together, as a recipe would hold them
SMALL = dict(model="mlp", loader="words", seed=7, context=3, n_embd=4, n_hidden=16,
             batch_size=32, steps=40, lr=1e-2, lr_schedule="cosine", weight_decay=1e-3,
             eval_every=10, eval_train_batches=5)


def configs(values):
    """(ModelConfig, TrainConfig) of a flat dict of settings."""
    return (settings.resolve(ModelConfig, [values], vocab_size=TOKENIZER.vocab_size),
            settings.resolve(TrainConfig, [values]))


def splits_for(values, lines3=None):
    mconfig, config = configs(values)
    lines3 = lines3 or (SPLIT[0][:2000], SPLIT[1][:200], SPLIT[2][:200])
    return {name: make_split(name, lines, TOKENIZER, mconfig.context, config.loader)
            for name, lines in zip(data.SPLIT_NAMES, lines3)}


def make_trainer(values, out_dir=None, progress=None, lines3=None):
    """A trainer of ``values``; with ``out_dir`` a new run there, or the committed one continued."""
    mconfig, config = configs(values)
    rng = RNG(config.seed)
    model = build_model(mconfig, config.backend, rng)
    lines3 = lines3 or (SPLIT[0][:2000], SPLIT[1][:200], SPLIT[2][:200])
    trainer = Trainer(config, model, splits_for(values, lines3), rng, progress=progress)
    if out_dir is not None:
        base = runs.neural_settings(mconfig, config)
        if (out_dir / runs.MANIFEST).exists():
            lock = runs.RunLock(out_dir)
            run = open_run(out_dir)
            trainer.restore(run.manifest["state"], run.arrays, run.metrics)
            trainer.store = runs.RunWriter.reopen(run, lock, base, len(trainer.state.metrics))
        else:
            trainer.store = runs.RunWriter.create(out_dir, [], base, TOKENIZER, None, lines3)
            trainer.save()
    return trainer


def finish(trainer):
    """Run to the end and release the run directory."""
    try:
        return trainer.run()
    finally:
        if trainer.store is not None:
            trainer.store.close()


# --- batches and evaluation ------------------------------------------------------------------

def test_words_batches_draw_uniformly_with_the_run_rng():
    split = make_split("train", SPLIT[0][:300], TOKENIZER, 3, "words")
    batches = Batches(split, 64, RNG(5))
    X, Y = batches.next()
    rng = RNG(5)
    idx = [int(rng.random() * len(split)) for _ in range(64)]
    assert np.array_equal(X, split.X[idx]) and np.array_equal(Y, split.Y[idx])
    assert batches.rng.get_state() == rng.get_state()


def test_stream_batches_are_consecutive_windows_that_wrap():
    lines = ["ab", "cde"]  # stream "ab\ncde\n": 7 tokens, context 3 -> 4 windows
    split = make_split("train", lines, TOKENIZER, 3, "stream")
    tokens = data.stream_tokens(lines, TOKENIZER).tolist()
    batches = Batches(split, 3, RNG(1))
    starts = []
    for _ in range(3):
        X, Y = batches.next()
        for x, y in zip(X.tolist(), Y.tolist()):
            starts.append(next(p for p in range(4) if tokens[p:p + 4] == x + [y]))
    # window start 0, 1, 2, ..., back to 0 when start + context reaches the length
    assert starts == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert batches.position == 1


def test_stream_evaluation_is_len_tokens_over_batch_size_fresh_batches():
    split = make_split("val", SPLIT[1], TOKENIZER, 3, "stream")
    chunks = list(eval_batches(split, 128))
    assert len(chunks) == split.n_tokens // 128
    assert np.array_equal(chunks[0][0], split.X[:128]) and all(w == 1 for *_, w in chunks)
    assert len(list(eval_batches(split, 128, max_batches=20))) == 20


def test_words_evaluation_is_the_exact_mean_over_every_example():
    config = dict(SMALL, steps=1)
    trainer = make_trainer(config)
    split = trainer.splits["val"]
    logits, _ = trainer.model.forward(split.X)
    logits = logits.astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -logp[np.arange(len(split)), split.Y].mean()
    assert evaluate(trainer.model, split, 32) == pytest.approx(expected, abs=1e-6)
    first = evaluate(trainer.model, trainer.splits["train"], 32, max_batches=2)
    assert first == pytest.approx(-np.mean(_nll(trainer.model, trainer.splits["train"], 64)), abs=1e-6)


def _nll(model, split, n):
    logits, _ = model.forward(split.X[:n])
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return logp[np.arange(n), split.Y[:n]]


def test_evaluation_leaves_the_bigram_penalty_out():
    config = dict(SMALL, model="bigram", context=1, batch_size=0, optimizer="sgd",
                                 lr=50.0, weight_decay=0.0, steps=1)
    trainer = make_trainer(config)
    split = trainer.splits["val"]
    _, penalised = trainer.model.forward(split.X, split.Y)
    assert evaluate(trainer.model, split, 0) < penalised


# --- the loop ---------------------------------------------------------------------------------

def test_records_and_evaluation_cadence():
    records = []
    result = make_trainer(SMALL, progress=records.append).run()
    assert records == result.metrics
    evals = [r["step"] for r in records if "val_loss" in r]
    assert evals == [0, 10, 20, 30, 39]  # before the update of every 10th step and of the last
    updates = [r for r in records if "loss" in r]
    assert [r["step"] for r in updates] == list(range(40))
    assert updates[0]["lr"] == SMALL["lr"] and updates[20]["lr"] == pytest.approx(SMALL["lr"] / 2)
    final = records[-1]
    assert final["step"] == 40 and final["test_perplexity"] == pytest.approx(math.exp(final["test_loss"]))
    assert records[-3]["val_loss"] < records[0]["val_loss"]


def _interrupt_at(step):
    def progress(record):
        if record.get("loss") is not None and record["step"] == step - 1:
            raise KeyboardInterrupt

    return progress


def assert_same_run(a_dir, b_dir):
    a, b = open_run(a_dir), open_run(b_dir)
    assert a.metrics == b.metrics  # bit-identical floats, not approximately
    assert a.manifest["state"] == b.manifest["state"]
    for part in ("model", "optimizer"):
        assert a.arrays[part].keys() == b.arrays[part].keys()
        for name in a.arrays[part]:
            assert np.array_equal(a.arrays[part][name], b.arrays[part][name]), (part, name)
    assert (a_dir / "metrics.jsonl").read_text() == (b_dir / "metrics.jsonl").read_text()


def interrupted(trainer):
    with pytest.raises(TrainingInterrupted) as stopped:
        finish(trainer)
    return stopped.value


@pytest.mark.parametrize("backend,loader", [("numpy", "words"), ("numpy", "stream"), ("torch", "words")])
def test_resume_is_bit_identical(tmp_path, backend, loader):
    if backend == "torch":
        pytest.importorskip("torch")
    config = dict(SMALL, backend=backend, loader=loader)
    straight, split_run = tmp_path / "straight", tmp_path / "split"
    finish(make_trainer(config, straight))

    stopped = interrupted(make_trainer(config, split_run, progress=_interrupt_at(20)))
    assert stopped.step == 20 and stopped.saved
    run = open_run(split_run)
    assert run.step == 20 and [r for r in run.metrics if "loss" in r][-1]["step"] == 19

    finish(make_trainer(config, split_run))
    assert_same_run(straight, split_run)


def test_interrupt_during_evaluation_drops_the_partial_step(tmp_path):
    def progress(record):
        if record.get("val_loss") is not None and record["step"] == 30:
            raise KeyboardInterrupt

    stopped = interrupted(make_trainer(SMALL, tmp_path / "run", progress=progress))
    run = open_run(tmp_path / "run")
    assert stopped.step == run.step == 30
    assert "val_loss" not in run.metrics[-1] and run.metrics[-1]["step"] == 29
    finish(make_trainer(SMALL, tmp_path / "run"))
    finish(make_trainer(SMALL, tmp_path / "straight"))
    assert_same_run(tmp_path / "straight", tmp_path / "run")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_deferred_to_a_step_boundary(tmp_path, signum):
    def progress(record):
        if record.get("loss") is not None and record["step"] == 11:
            os.kill(os.getpid(), signum)

    before = signal.getsignal(signum)
    stopped = interrupted(make_trainer(SMALL, tmp_path, progress=progress))
    assert stopped.step == 12 and stopped.signum == signum
    assert signal.getsignal(signum) is before
    assert open_run(tmp_path).step == 12


def test_checkpoints_every_n_steps_and_only_the_committed_weights_stay(tmp_path):
    commits = []
    trainer = make_trainer(dict(SMALL, checkpoint_every=7), tmp_path)
    commit = trainer.store.commit
    trainer.store.commit = lambda state, arrays: (commits.append(state["step"]),
                                                  commit(state, arrays))
    finish(trainer)
    assert commits == [7, 14, 21, 28, 35, 40]
    assert sorted(p.name for p in tmp_path.glob("weights-*")) == ["weights-000000040.safetensors"]


def test_extending_a_finished_run(tmp_path):
    short = dict(SMALL, steps=20, lr_schedule="constant")
    finish(make_trainer(short, tmp_path))
    longer = dict(short, steps=30)
    trainer = make_trainer(longer, tmp_path)
    assert "test_loss" not in trainer.state.metrics[-1]
    result = finish(trainer)
    assert result.resumed_from == 20 and result.metrics[-1]["step"] == 30
    assert sum("test_loss" in r for r in result.metrics) == 1
    assert open_run(tmp_path).metrics == result.metrics


def test_a_diverging_run_stops_and_keeps_its_last_checkpoint(tmp_path):
    from tinylm.train import TrainingDiverged

    # Five sound steps first: whether lr 1e30 turns the very first update's loss into nan
    # or only a later one depends on how the BLAS kernel of the machine meets inf - inf,
    # and a run diverging at step 1 keeps its step-0 checkpoint.
    sound = dict(SMALL, lr_schedule="constant", checkpoint_every=1)
    finish(make_trainer(dict(sound, steps=5), tmp_path))
    trainer = make_trainer(dict(sound, lr=1e30), tmp_path)
    with pytest.raises(TrainingDiverged, match=r"(became nan|stopped being finite numbers) "
                                               r"(at|by) step \d+"):
        finish(trainer)
    run = open_run(tmp_path)
    assert run.step >= 5 and all(np.isfinite(a).all() for a in run.arrays["model"].values())
    assert all(np.isfinite(v) for r in run.metrics for v in r.values() if isinstance(v, float))
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


# --- checkpoints of real models --------------------------------------------------------------

def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    trainer = make_trainer(dict(SMALL, steps=15), tmp_path)
    finish(trainer)
    run = open_run(tmp_path)
    assert run.config == trainer.config and run.model_config == trainer.model.config
    assert run.tokenizer == TOKENIZER and run.step == 15
    X = trainer.splits["val"].X[:50]
    trainer.model.eval()
    assert np.array_equal(run.model.forward(X)[0], trainer.model.forward(X)[0])
    for name, value in trainer.model.state_dict().items():
        assert np.array_equal(run.model.state_dict()[name], value)


def test_a_numpy_checkpoint_loads_on_torch(tmp_path):
    pytest.importorskip("torch")
    trainer = make_trainer(dict(SMALL, steps=5), tmp_path)
    finish(trainer)
    run = open_run(tmp_path, backend="torch")
    X = trainer.splits["val"].X[:50]
    np.testing.assert_allclose(run.model.forward(X)[0].detach().numpy(), trainer.model.forward(X)[0],
                               atol=1e-5)


# --- every backend computes the same run -------------------------------------------------------

def test_micrograd_backend_agrees_with_numpy():
    tiny = dict(SMALL, n_embd=2, n_hidden=4, context=2, batch_size=4, steps=6,
                               eval_every=3, eval_train_batches=2, weight_decay=0.0)
    lines3 = (SPLIT[0][:20], SPLIT[1][:3], SPLIT[2][:3])
    runs = {b: make_trainer(dict(tiny, backend=b), lines3=lines3).run()
            for b in ("numpy", "micrograd")}
    assert len(runs["numpy"].metrics) == len(runs["micrograd"].metrics)
    for a, b in zip(runs["numpy"].metrics, runs["micrograd"].metrics):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_neural_bigram_approaches_the_count_bigram():
    """Full-batch gradient descent at lr 50 on the bigram table ends near the counts' loss."""
    from tinylm.ngram import NgramConfig, NgramModel, nll
    lines3 = (SPLIT[0][:4000], SPLIT[1], SPLIT[2])
    mconfig, train_config = resolve_configs("bigram", None, {"steps": 100, "eval_every": 100})
    config = {**dataclasses.asdict(mconfig), **dataclasses.asdict(train_config)}
    result = make_trainer(config, lines3=lines3).run()
    splits = splits_for(config, lines3)
    counts = NgramModel(NgramConfig(2, TOKENIZER.vocab_size, "additive", 1.0))
    counts.fit(splits["train"].X, splits["train"].Y)
    count_val = nll(counts, splits["val"].X, splits["val"].Y)
    neural_val = result.last("val_loss")
    assert result.metrics[0]["val_loss"] > count_val + 1.0  # it starts far away...
    assert abs(neural_val - count_val) < 0.03  # ...and ends close


def test_each_update_uses_the_learning_rate_of_its_own_step():
    """A one-step cosine run updates at the full rate (step 1's rate would be 0: no update)."""
    trainer = make_trainer(dict(SMALL, steps=1, optimizer="sgd", weight_decay=0.0))
    before = trainer.model.state_dict()
    rng = RNG(1)
    rng.set_state(trainer.rng.get_state())  # the run's RNG as the trainer will draw from it
    X, Y = Batches(trainer.splits["train"], 32, rng).next()
    trainer.model.forward(X, Y)
    trainer.model.backward()
    grads = {name: p.grad.copy() for name, p in trainer.model._named_parameters().items()}
    trainer = make_trainer(dict(SMALL, steps=1, optimizer="sgd", weight_decay=0.0))
    trainer.run()
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_allclose(value, before[name] - SMALL["lr"] * grads[name], atol=1e-6)


def test_an_evaluation_cuts_the_padding_a_long_item_leaves_and_scores_the_same():
    from tinylm.batches import eval_batches, make_split
    from tinylm.data import Tokenizer
    from tinylm.layers.numpy_layers import sequence_cross_entropy
    from tinylm.models import ModelConfig, build_model

    lines = ["ab", "abc", "b", "ca", "x" * 59] + ["ab", "bca", "c"] * 3000
    tok = Tokenizer.from_lines(lines)
    split = make_split("val", lines, tok, 0, "words", block_size=60)
    chunks = list(eval_batches(split, 32))
    assert chunks[0][0].shape[1] == 60  # the chunk holding the long item keeps its block
    assert all(X.shape[1] == 4 for X, _, _ in chunks[1:])  # the others end by position 4
    model = build_model(ModelConfig(model="transformer", vocab_size=tok.vocab_size, n_embd=8,
                                    n_layers=1, n_heads=2, block_size=60), "numpy", RNG(3))
    model.eval()
    cut = sum(w * sequence_cross_entropy(model.forward(X)[0], Y) for X, Y, w in chunks)
    whole = sequence_cross_entropy(model.forward(split.X)[0], split.Y) * split.n_tokens
    assert cut == pytest.approx(whole, rel=1e-6)
    assert sum(w for _, _, w in chunks) == split.n_tokens
