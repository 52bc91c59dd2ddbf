"""Diagnostics: each statistic against an independent computation, each plot written."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from tinylm import diagnostics as dg
from tinylm import layer_stats as st
from tinylm import plotting as pl
from tinylm.errors import ConfigError


def _tanh_batch(seed: int = 0, shape=(64, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.5
    return np.tanh(x)


def test_saturation_counts_entries_beyond_threshold():
    t = _tanh_batch()
    flat = [float(v) for v in t.ravel()]
    expected = 100.0 * sum(abs(v) > 0.97 for v in flat) / len(flat)
    assert st.saturation(t) == pytest.approx(expected)
    assert st.saturation(np.zeros(5)) == 0.0
    assert st.saturation(np.full(5, 0.99)) == 100.0


def test_dead_units_tanh_and_relu():
    t = _tanh_batch()
    t[:, 3] = 0.99   # saturated on every example: dead
    t[:, 7] = -1.0   # the same in the other direction
    t[5, 7] = 0.0    # ...except one example: alive
    mask = st.dead_units(t)
    expected = [all(abs(t[i, j]) > 0.97 for i in range(t.shape[0])) for j in range(t.shape[1])]
    assert mask.tolist() == expected
    assert mask[3] and not mask[7]
    r = np.maximum(np.random.default_rng(1).standard_normal((8, 4)), 0)
    r[:, 2] = 0.0
    assert st.dead_units(r, "relu").tolist() == [bool(np.all(r[:, j] <= 0)) for j in range(4)]
    with pytest.raises(ConfigError):
        st.dead_units(t, "sigmoid")


def test_dead_units_use_batch_and_time_as_examples():
    t = _tanh_batch(shape=(4, 3, 5))
    t[:, :, 1] = 0.999
    t[2, 1, 4] = 0.999
    mask = st.dead_units(t)
    assert mask.shape == (5,)
    assert mask.tolist() == [False, True, False, False, bool(np.all(np.abs(t[..., 4]) > 0.97))]


def test_activation_stats_against_statistics_module():
    t = _tanh_batch(2)
    s = st.activation_stats("tanh0", t)
    flat = [float(v) for v in t.ravel()]
    assert s.mean == pytest.approx(statistics.fmean(flat), abs=1e-12)
    assert s.std == pytest.approx(statistics.pstdev(flat), rel=1e-10)
    assert s.saturation == pytest.approx(st.saturation(t))
    assert (s.dead, s.units) == (int(st.dead_units(t).sum()), 16)


def test_grad_and_weight_stats():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((10, 20)).astype(np.float32)
    grad = (rng.standard_normal((10, 20)) * 1e-3 + 2e-4).astype(np.float32)
    g = st.grad_stats("x", grad)
    flat = [float(v) for v in grad.ravel()]
    assert g.mean == pytest.approx(statistics.fmean(flat), rel=1e-9)
    assert g.std == pytest.approx(statistics.pstdev(flat), rel=1e-9)
    w = st.weight_stats("layers.0.weight", data, grad)
    assert w.shape == (10, 20)
    assert w.grad_data_ratio == pytest.approx(
        statistics.pstdev(flat) / statistics.pstdev([float(v) for v in data.ravel()]), rel=1e-9)
    with pytest.raises(ConfigError):
        st.weight_stats("bad", data, grad[:, :3])


def test_update_ratio_is_log10_of_std_ratio():
    rng = np.random.default_rng(4)
    before = rng.standard_normal((30, 30))
    after = before - 0.1 * rng.standard_normal((30, 30)) * 0.05
    expected = math.log10(statistics.pstdev([float(a - b) for a, b in zip(after.ravel(), before.ravel())])
                          / statistics.pstdev([float(v) for v in before.ravel()]))
    assert st.update_ratio(before, after) == pytest.approx(expected, rel=1e-10)
    assert st.update_ratio(before, before.copy()) == -math.inf
    with pytest.raises(ConfigError):
        st.update_ratio(before, after[:, :3])


def test_smooth_is_trailing_mean():
    v = [1.0, 3.0, 5.0, 7.0, 9.0]
    assert st.smooth(v, 2).tolist() == [1.0, 2.0, 4.0, 6.0, 8.0]
    assert st.smooth(v, 1).tolist() == v
    assert st.smooth(v, 100).tolist() == pytest.approx([1, 2, 3, 4, 5])
    with pytest.raises(ConfigError):
        st.smooth(v, 0)


def test_loss_series_reads_batch_eval_and_skips_final():
    records = [{"step": 0, "loss": 3.3}, {"step": 1, "loss": 3.1},
               {"step": 1, "train_loss": 3.0, "val_loss": 3.05},
               {"test_loss": 2.9, "test_perplexity": 18.2}]
    s = pl.loss_series(records)
    assert s["batch"] == ([0, 1], [3.3, 3.1])
    assert s["train"] == ([1], [3.0]) and s["val"] == ([1], [3.05])


def _snapshot() -> st.Snapshot:
    rng = np.random.default_rng(5)
    acts = {"layers.2": _tanh_batch(6), "layers.5": _tanh_batch(7, (4, 2, 16))}
    grads = {"layers.2": rng.standard_normal((64, 16)) * 1e-3, "layers.5": None}
    weights = {"layers.0.weight": (rng.standard_normal((16, 30)), rng.standard_normal((16, 30)) * 1e-3)}
    return st.snapshot_from_arrays(acts, grads, weights)


def test_snapshot_and_table():
    snap = _snapshot()
    assert [s.name for s in snap.activation_stats] == ["layers.2", "layers.5"]
    assert [g.name for g in snap.gradient_stats] == ["layers.2"]   # None means unavailable
    rec = snap.to_record()
    assert rec["weights"][0]["shape"] == [16, 30]
    table = st.format_table(snap, {"layers.0.weight": -3.01})
    assert "layers.5" in table and "16x30" in table and "-3.01" in table


@pytest.fixture
def figures():
    """Close what a test drew: figures that are returned, not saved, stay open."""
    plt = pl.headless_pyplot()
    yield
    plt.close("all")


def _lines(fig) -> dict[str, tuple[str, str]]:
    """label -> (linestyle, marker) of every line drawn, the guide line included."""
    return {line.get_label(): (line.get_linestyle(), line.get_marker()) for line in fig.axes[0].lines}


MARKERS_ONLY = ("None", "o")


@pytest.mark.parametrize("plot", ["activation", "gradient", "weight"])
def test_histogram_plots_write_png(tmp_path, plot):
    snap = _snapshot()
    fn = {"activation": pl.plot_activation_histograms, "gradient": pl.plot_gradient_histograms,
          "weight": pl.plot_weight_gradient_histograms}[plot]
    path = fn(snap, tmp_path / f"{plot}.png", step=7, run="r")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histograms_say_what_they_show_and_when(figures):
    snap = _snapshot()
    for figure, xlabel, what, names in (
            (pl.activation_figure, "activation value", "activations", ["layers.2", "layers.5"]),
            (pl.gradient_figure, "gradient value", "gradient of the loss w.r.t. the activations",
             ["layers.2"]),
            (pl.weight_gradient_figure, "weight gradient value",
             "gradient of the loss w.r.t. the weight matrices", ["layers.0.weight"])):
        ax = figure(snap, step=7, run="runs/deep").axes[0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, "density")
        assert ax.get_title().startswith(f"runs/deep: {what}") and ax.get_title().endswith(" at step 7")
        assert [line.get_label().split(":")[0].split(" ")[0] for line in ax.lines] == names
        assert what in figure(snap).axes[0].get_title() and "step" not in figure(snap).axes[0].get_title()


def test_update_ratio_plot_names_the_real_update(figures):
    steps = list(range(0, 100, 10))
    fig = pl.update_ratio_figure(steps, {"a": [-2.5] * 10, "b": [-3.2]}, run="r")
    ax = fig.axes[0]
    assert "optimizer update" in ax.get_ylabel() and ax.get_xlabel() == "step"
    assert ax.get_title().startswith("r: update:data ratio")
    lines = _lines(fig)
    assert lines["a"] == ("-", "o") and lines["b"] == MARKERS_ONLY   # one point: no trend to draw
    assert lines["1e-3 guide"][0] == "--"


def test_loss_plot_of_a_two_step_run_draws_no_trend(figures):
    records = [{"step": 0, "train_loss": 3.30, "val_loss": 3.31}, {"step": 0, "loss": 3.28},
               {"step": 1, "train_loss": 3.20, "val_loss": 3.25}, {"step": 1, "loss": 3.22},
               {"step": 2, "test_loss": 3.24}]
    fig = pl.loss_figure(records, run="tiny")
    # a window of 1 smooths nothing: the batch loss is drawn once, not twice under two names
    assert _lines(fig) == {"batch loss": MARKERS_ONLY, "train loss": MARKERS_ONLY,
                           "val loss": MARKERS_ONLY}
    ax = fig.axes[0]
    assert ax.get_title() == "tiny: batch, train and val loss"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss (nats per character)")
    lo, hi = ax.get_ylim()
    assert lo < 3.20 and hi > 3.31
    fig.canvas.draw()
    assert [t for t in ax.get_xticks() if 0 <= t <= 1] == [0, 1]   # no step 0.5


def test_loss_plot_smooths_long_runs_and_clamps_the_window(figures):
    records = [{"step": i, "loss": 3.3 - i * 0.01} for i in range(100)]
    records += [{"step": 0, "val_loss": 3.3}, {"step": 50, "val_loss": 2.9}, {"step": 99, "val_loss": 2.5}]
    fig = pl.loss_figure(records)
    assert _lines(fig) == {"batch loss": ("-", "None"), "batch loss (mean of 2)": ("-", "None"),
                           "val loss": ("-", "o")}
    assert fig.axes[0].get_title() == "batch (mean of 2) and val loss"
    short = [{"step": i, "loss": 3.0 + (i % 2) * 0.1} for i in range(10)]
    assert "batch loss (mean of 10)" in _lines(pl.loss_figure(short, window=50))
    assert pl.loss_figure(short[:1], window=50).axes[0].get_title() == "batch loss"
    with pytest.raises(ConfigError):
        pl.loss_figure(short, window=0)


def test_update_ratio_and_loss_plots_write_png(tmp_path):
    steps = list(range(0, 100, 10))
    ratios = {"layers.0.weight": [-2.5 - 0.05 * i for i in range(10)]}
    p = pl.plot_update_ratios(steps, ratios, tmp_path / "update.png", run="r")
    assert p.stat().st_size > 1000
    records = [{"step": i, "loss": 3.3 - i * 0.01} for i in range(100)]
    records += [{"step": 99, "train_loss": 2.4, "val_loss": 2.5}]
    p = pl.plot_loss_curve(records, tmp_path / "loss.png", run="r")
    assert p.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))   # written atomically
    with pytest.raises(ConfigError):
        pl.plot_loss_curve([{"test_loss": 1.0}], tmp_path / "none.png")


# --- measuring a model ------------------------------------------------------------------

SMALL = dict(vocab_size=9, context=4, n_embd=3, n_hidden=6)


def _small_batch(context: int, B: int = 24):
    rs = np.random.RandomState(0)
    return rs.randint(0, 9, size=(B, context)), rs.randint(0, 9, size=B)


def _torch_bnmlp(state, X, Y):
    """A 2-layer BatchNorm MLP recomputed from its state dict with torch autograd (float64).

    Returns the parameters (with their .grad) by state-dict name and the two tanh outputs.
    """
    import torch

    s = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in state.items()}
    h = s["layers.0.weight"][torch.from_numpy(X)].reshape(len(X), -1)   # (B, T*E)
    tanhs = []
    for lin, bn in ((2, 3), (5, 6)):
        pre = h @ s[f"layers.{lin}.weight"].T
        mean, var = pre.mean(0), pre.var(0, unbiased=False)
        pre = s[f"layers.{bn}.weight"] * (pre - mean) / torch.sqrt(var + 1e-5) + s[f"layers.{bn}.bias"]
        h = torch.tanh(pre)
        h.retain_grad()
        tanhs.append(h)
    logits = h @ s["layers.8.weight"].T + s["layers.8.bias"]
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(Y)).backward()
    return s, tanhs


def _bnmlp(seed: int = 3):
    from tinylm.models import ModelConfig, build_model
    from tinylm.rng import RNG

    return build_model(ModelConfig("bnmlp", n_layers=2, **SMALL), "numpy", RNG(seed))


def _assert_states_equal(a, b):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_measure_matches_an_independent_torch_computation():
    """Every statistic, and for plain SGD the update:data ratio is log10(std(lr * grad) / std(data))."""
    pytest.importorskip("torch")
    from tinylm.optim import make_optimizer

    model = _bnmlp()
    optimizer = make_optimizer(model, "sgd", lr=0.3)
    X, Y = _small_batch(4)
    before, optimizer_before = model.state_dict(), optimizer.state_dict()
    snap, ratios = dg.measure(model, X, Y, optimizer, lr=0.05)
    _assert_states_equal(model.state_dict(), before)   # measuring changed nothing
    _assert_states_equal(optimizer.state_dict(), optimizer_before)
    assert model.training and optimizer.lr == 0.3

    s, tanhs = _torch_bnmlp(before, X, Y)
    assert [a.name for a in snap.activation_stats] == ["layers.4 (tanh)", "layers.7 (tanh)"]
    for a, g, t in zip(snap.activation_stats, snap.gradient_stats, tanhs):
        v = t.detach()
        assert a.mean == pytest.approx(v.mean().item(), abs=1e-6)
        assert a.std == pytest.approx(v.std(unbiased=False).item(), rel=1e-5)
        assert a.saturation == pytest.approx(100 * (v.abs() > 0.97).double().mean().item())
        assert a.dead == int((v.abs() > 0.97).all(0).sum())
        assert g.std == pytest.approx(t.grad.std(unbiased=False).item(), rel=1e-4)
        assert g.mean == pytest.approx(t.grad.mean().item(), abs=1e-7)
    weights = {w.name: w for w in snap.weight_stats}
    assert set(weights) == {"layers.0.weight", "layers.2.weight", "layers.5.weight", "layers.8.weight"}
    for name, w in weights.items():
        grad, data = s[name].grad, s[name].detach()
        assert w.grad_std == pytest.approx(grad.std(unbiased=False).item(), rel=1e-4)
        assert w.grad_data_ratio == pytest.approx(
            (grad.std(unbiased=False) / data.std(unbiased=False)).item(), rel=1e-4)
        assert ratios[name] == pytest.approx(
            math.log10((0.05 * grad).std(unbiased=False).item() / data.std(unbiased=False).item()),
            abs=1e-4)


def test_measure_adamw_ratio_is_one_torch_adamw_step():
    """With AdamW the ratio is that of its real update: decay, moments, bias correction and all."""
    torch = pytest.importorskip("torch")
    from tinylm.optim import make_optimizer

    model = _bnmlp()
    optimizer = make_optimizer(model, "adamw", lr=0.01, weight_decay=0.1)
    for seed in (1, 2, 3):   # a few updates first, so the moments are not zero
        rs = np.random.RandomState(seed)
        model.forward(rs.randint(0, 9, size=(24, 4)), rs.randint(0, 9, size=24))
        model.backward()
        optimizer.step()
    X, Y = _small_batch(4)
    before, moments = model.state_dict(), optimizer.state_dict()
    snap, ratios = dg.measure(model, X, Y, optimizer, lr=0.02)
    _assert_states_equal(model.state_dict(), before)
    _assert_states_equal(optimizer.state_dict(), moments)
    assert optimizer.lr == 0.01

    s, _ = _torch_bnmlp(before, X, Y)
    index = {name: i for i, name in enumerate(model._named_parameters())}
    assert [id(p) for p in model.parameters()] == [id(p) for p in model._named_parameters().values()]
    weights = [name for name, value in before.items() if name in index and value.ndim == 2]
    assert set(ratios) == set(weights) == {w.name for w in snap.weight_stats}
    params = {name: s[name].detach().clone() for name in weights}
    reference = torch.optim.AdamW(list(params.values()), lr=0.02, weight_decay=0.1, foreach=False)
    for name, p in params.items():
        p.grad = s[name].grad
        reference.state[p] = {"step": torch.tensor(3.0),
                              **{buf: torch.tensor(moments[f"{buf}.{index[name]}"], dtype=torch.float64)
                                 for buf in ("exp_avg", "exp_avg_sq")}}
    reference.step()
    for name, p in params.items():
        data = s[name].detach()
        expected = math.log10((p - data).std(unbiased=False).item() / data.std(unbiased=False).item())
        assert ratios[name] == pytest.approx(expected, abs=1e-5), name
        # ...which is not what lr * grad would have said
        assert abs(expected - math.log10((0.02 * s[name].grad).std(unbiased=False).item()
                                         / data.std(unbiased=False).item())) > 0.1


def test_measure_needs_the_optimizer_for_update_ratios():
    model = _bnmlp()
    X, Y = _small_batch(4)
    snap, ratios = dg.measure(model, X, Y)
    assert ratios == {} and len(snap.weight_stats) == 4
    with pytest.raises(ConfigError):
        dg.measure(model, X, Y, lr=0.1)


@pytest.mark.parametrize("backend", ["torch", "torch-module"])
def test_measure_agrees_across_backends(backend):
    pytest.importorskip("torch")
    from tinylm.models import ModelConfig, build_model
    from tinylm.optim import make_optimizer
    from tinylm.rng import RNG

    config = ModelConfig("wavenet", **SMALL)
    X, Y = _small_batch(4)

    def measured(backend):
        model = build_model(config, backend, RNG(4))
        return dg.measure(model, X, Y, make_optimizer(model, "adamw", lr=0.1, weight_decay=0.01))

    ref, ref_ratios = measured("numpy")
    snap, ratios = measured(backend)
    assert set(ratios) == set(ref_ratios) and len(ratios) == 4
    for a, b in zip(snap.activation_stats, ref.activation_stats):
        assert (a.name, a.dead, a.units) == (b.name, b.dead, b.units)
        assert a.std == pytest.approx(b.std, rel=1e-4)
    for a, b in zip(snap.gradient_stats, ref.gradient_stats):
        assert a.std == pytest.approx(b.std, rel=1e-3)
    for name in ref_ratios:
        assert ratios[name] == pytest.approx(ref_ratios[name], abs=1e-3)


def test_measure_on_the_scalar_engine():
    from tinylm.models import ModelConfig, build_model
    from tinylm.rng import RNG

    from tinylm.optim import make_optimizer

    config = ModelConfig("mlp", vocab_size=7, context=2, n_embd=2, n_hidden=4)
    X, Y = np.array([[0, 1], [2, 3], [4, 5], [6, 0]]), np.array([1, 2, 3, 4])
    results = {}
    for backend in ("numpy", "micrograd"):
        model = build_model(config, backend, RNG(2))
        optimizer = make_optimizer(model, "adamw", lr=0.05)
        before, moments = model.state_dict(), optimizer.state_dict()
        results[backend] = dg.measure(model, X, Y, optimizer)
        _assert_states_equal(model.state_dict(), before)
        _assert_states_equal(optimizer.state_dict(), moments)
    (ref, ref_ratios), (snap, ratios) = results["numpy"], results["micrograd"]
    assert snap.activation_stats[0].std == pytest.approx(ref.activation_stats[0].std, rel=1e-5)
    assert snap.gradient_stats[0].std == pytest.approx(ref.gradient_stats[0].std, rel=1e-4)
    assert set(ratios) == set(ref_ratios) == {"layers.0.weight", "layers.2.weight", "layers.4.weight"}
    for name in ref_ratios:
        assert ratios[name] == pytest.approx(ref_ratios[name], abs=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-module", "micrograd"])
def test_activation_layers_are_found_by_type(backend):
    from tinylm.layers.base import Layer
    from tinylm.models import ModelConfig, build_model, layer_module
    from tinylm.rng import RNG

    if backend.startswith("torch"):
        torch = pytest.importorskip("torch")
    model = build_model(ModelConfig("mlp", vocab_size=7, context=2, n_embd=2, n_hidden=4), backend, RNG(2))
    L = layer_module(backend)
    found = dg.activation_layers(model)
    assert [(name, kind) for name, _, kind in found] == [("layers.3 (tanh)", "tanh")]
    assert found[0][1] is model.layers[3] and isinstance(model.layers[3], L.Tanh)
    if backend == "torch-module":
        assert isinstance(found[0][1], torch.nn.Tanh)
    if backend != "numpy":
        return

    class Squash(L.Tanh):   # a tanh under another name is still a tanh
        pass

    class Tanh(Layer):      # ...and a lookalike name alone is not
        pass

    model.layers[3].__class__ = Squash
    model.layers[1] = Tanh()
    assert [name for name, _, _ in dg.activation_layers(model)] == ["layers.3 (squash)"]


def test_initial_loss_record():
    ok = dg.initial_loss_record(3.31, 27)
    assert ok["expected_initial_loss"] == pytest.approx(math.log(27))
    assert not ok["initial_loss_warning"]
    assert dg.initial_loss_record(3.9, 27)["initial_loss_warning"]


def test_history_keeps_the_last_record_of_each_step(tmp_path):
    from tinylm.io import append_jsonl

    path = tmp_path / dg.DIAGNOSTICS_FILE
    for step, r in ((0, -2.0), (10, -2.5), (20, -2.9), (10, -2.6)):   # 10 measured again after a resume
        append_jsonl(path, {"step": step, "update_ratios": {"w": r}})
    steps, series = dg.update_ratio_series(dg.read_history(path))
    assert steps == [0, 10, 20] and series == {"w": [-2.0, -2.6, -2.9]}
    assert dg.read_history(tmp_path / "missing.jsonl") == []


# --- during training --------------------------------------------------------------------

def _trainer(backend: str, optimizer: str = "sgd", out_dir=None):
    from tinylm import data
    from tinylm.batches import make_split
    from tinylm.models import build_model
    from tinylm.rng import RNG
    from tinylm import runs
    from tinylm.models import ModelConfig
    from tinylm.train import TrainConfig, Trainer

    lines = data.read_lines(data.default_dataset())
    train, val, test = data.split_lines(lines)
    tok = data.Tokenizer.from_lines(lines)
    lr, weight_decay = (0.1, 0.0) if optimizer == "sgd" else (0.01, 0.1)
    mconfig = ModelConfig("bnmlp", tok.vocab_size, context=4, n_embd=3, n_hidden=8, n_layers=2)
    config = TrainConfig(backend=backend, batch_size=16, steps=12, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, lr_schedule="step", eval_every=6,
                         eval_train_batches=2)
    lines3 = (train[:300], val[:50], test[:50])
    splits = {name: make_split(name, ls, tok, 4, "words")
              for name, ls in zip(("train", "val", "test"), lines3)}
    rng = RNG(config.seed)
    model = build_model(mconfig, backend, rng)
    trainer = Trainer(config, model, splits, rng)
    if out_dir is not None:
        trainer.store = runs.RunWriter.create(out_dir, [], runs.neural_settings(mconfig, config),
                                              tok, None, lines3)
    return trainer, config


BNMLP_WEIGHTS = {"layers.0.weight", "layers.2.weight", "layers.5.weight", "layers.8.weight"}


@pytest.mark.parametrize("backend,optimizer", [("numpy", "sgd"), ("torch", "sgd"),
                                               ("numpy", "adamw"), ("torch", "adamw"),
                                               ("torch-module", "adamw")])
def test_recorder_measures_without_changing_the_run(tmp_path, backend, optimizer):
    if backend != "numpy":
        pytest.importorskip("torch")
    from tinylm.train import learning_rate

    plain, _ = _trainer(backend, optimizer)
    plain_result = plain.run()
    watched, config = _trainer(backend, optimizer)
    recorder = dg.Recorder(watched.model, watched.splits["train"], 5,
                           lambda s: learning_rate(config, s), tmp_path / dg.DIAGNOSTICS_FILE, seed=3,
                           optimizer=watched.optimizer)
    made = []
    watched.progress = lambda r: made.append(recorder(r))
    result = watched.run()
    assert result.metrics == plain_result.metrics   # exactly the same floats
    _assert_states_equal(watched.model.state_dict(), plain.model.state_dict())
    _assert_states_equal(watched.optimizer.state_dict(), plain.optimizer.state_dict())
    history = dg.read_history(tmp_path / dg.DIAGNOSTICS_FILE)
    assert [r["step"] for r in history] == [0, 5, 10]
    assert [r for r in made if r is not None] == history
    steps, series = dg.update_ratio_series(history)
    assert steps == [0, 5, 10] and set(series) == BNMLP_WEIGHTS
    assert all(math.isfinite(v) and -6 < v < 1 for values in series.values() for v in values)
    assert history[2]["lr"] == pytest.approx(config.lr * 0.1)   # step 10 of 12 is past the 75 % drop
    assert "diagnostics at step 5" in dg.summary_line(history[1])


def test_diagnose_run_takes_one_step_of_the_saved_adamw(tmp_path, monkeypatch):
    """The final ratios are one more AdamW step from the checkpoint's moments, by hand."""
    from tinylm.batches import Batches, make_split
    from tinylm.rng import RNG
    from tinylm.runs import open_run

    run = tmp_path / "run"
    trainer, config = _trainer("numpy", "adamw", out_dir=run)
    trainer.run()
    trainer.store.close()
    saved = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    titles, save = [], pl._save

    def saving(fig, path):
        titles.append(fig.axes[0].get_title())
        return save(fig, path)

    monkeypatch.setattr(pl, "_save", saving)
    result = dg.diagnose_run(run, tmp_path / "plots", batch_size=64, seed=5)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == saved
    assert all(t.startswith("run: ") for t in titles) and len(titles) == 5
    assert all(t.endswith(" at step 12") for t in titles[:3])
    assert result.step == 12 and set(result.update_ratios) == BNMLP_WEIGHTS
    assert [p.name for p in result.plots] == ["activations.png", "gradients.png", "weight_gradients.png",
                                              "update_ratios.png", "loss.png"]

    loaded = open_run(run)
    split = make_split("train", loaded.lines3[0], loaded.tokenizer, 4, "words")
    X, Y = Batches(split, 64, RNG(5)).next()
    loaded.model.forward(X, Y)
    loaded.model.backward()
    moments, t = loaded.arrays["optimizer"], int(loaded.arrays["optimizer"]["step"]) + 1
    assert t == 13
    lr, wd, (beta1, beta2), eps = config.lr * 0.1, config.weight_decay, (0.9, 0.999), 1e-8
    for i, (name, p) in enumerate(loaded.model._named_parameters().items()):
        if name not in BNMLP_WEIGHTS:
            continue
        w, g = p.data.astype(np.float64), p.grad.astype(np.float64)
        m = beta1 * moments[f"exp_avg.{i}"] + (1 - beta1) * g
        v = beta2 * moments[f"exp_avg_sq.{i}"] + (1 - beta2) * g * g
        after = w * (1 - lr * wd) - lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        expected = math.log10(np.std(after - w) / np.std(w))
        assert result.update_ratios[name] == pytest.approx(expected, abs=1e-4), name
