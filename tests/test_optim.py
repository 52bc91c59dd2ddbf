"""AdamW and SGD against torch.optim, optimizer state round trips, and the schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinylm.errors import CheckpointError, ConfigError
from tinylm.layers.numpy_layers import Parameter
from tinylm.micrograd import nn
from tinylm.micrograd.engine import Value
from tinylm.models import ModelConfig, build_model
from tinylm.optim import SGD, AdamW, TorchOptimizer, ValueOptimizer, lr_at, make_optimizer
from tinylm.rng import RNG

CONFIG = ModelConfig("mlp", vocab_size=27, context=3, n_embd=8, n_hidden=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices are faster on one thread, and far faster when other work loads the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def batches(steps: int, B: int = 32, seed: int = 0):
    rs = np.random.RandomState(seed)
    return [(rs.randint(0, 27, size=(B, 3)), rs.randint(0, 27, size=B)) for _ in range(steps)]


def train(model, opt, data, schedule=None):
    losses = []
    for step, (X, Y) in enumerate(data):
        if schedule:
            opt.lr = schedule(step)
        _, loss = model.forward(X, Y)
        losses.append(loss.item() if isinstance(loss, torch.Tensor) else loss)
        model.backward()
        opt.step()
    return losses


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def test_numpy_adamw_follows_torch_for_300_steps():
    """The trainer's situation: two models, same init, same batches, cosine schedule."""
    data = batches(300)
    schedule = lambda step: lr_at(step, 300, 1e-2, "cosine")  # noqa: E731
    ours = build_model(CONFIG, "numpy", RNG(1))
    theirs = build_model(CONFIG, "torch", RNG(1))
    l1 = train(ours, make_optimizer(ours, "adamw", 1e-2, weight_decay=1e-4), data, schedule)
    opt = make_optimizer(theirs, "adamw", 1e-2, weight_decay=1e-4)
    assert isinstance(opt, TorchOptimizer)
    l2 = train(theirs, opt, data, schedule)
    np.testing.assert_allclose(l1, l2, rtol=0, atol=2e-6)
    assert max_diff(ours.state_dict(), theirs.state_dict()) < 2e-6


@pytest.mark.parametrize("wd,betas,eps", [(0.0, (0.9, 0.999), 1e-8), (0.1, (0.8, 0.99), 1e-6)])
def test_adamw_update_matches_torch_float32_and_float64(wd, betas, eps):
    rs = np.random.RandomState(0)
    p0 = rs.randn(1000).astype(np.float32)
    grads = [rs.randn(1000).astype(np.float32) for _ in range(300)]
    for dtype, tol in [(np.float32, 2e-6), (np.float64, 1e-14)]:
        ours = Parameter(p0.astype(dtype))
        opt = AdamW([ours], lr=3e-3, betas=betas, eps=eps, weight_decay=wd)
        ref = torch.tensor(p0.astype(dtype), requires_grad=True)
        topt = torch.optim.AdamW([ref], lr=3e-3, betas=betas, eps=eps, weight_decay=wd, foreach=False)
        for g in grads:
            ours.grad = g.astype(dtype)
            ref.grad = torch.from_numpy(g.astype(dtype))
            opt.step()
            topt.step()
        assert ours.data.dtype == dtype
        np.testing.assert_allclose(ours.data, ref.detach().numpy(), rtol=0, atol=tol)
        np.testing.assert_allclose(opt.exp_avg_sq[0], topt.state[ref]["exp_avg_sq"].numpy(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_micrograd_models_get_the_value_optimizers():
    config = ModelConfig("mlp", vocab_size=27, context=3, n_embd=2, n_hidden=4)
    model = build_model(config, "micrograd", RNG(1))
    n = len(model.parameters())
    for kind, cls in (("adamw", nn.AdamW), ("sgd", nn.SGD)):
        opt = make_optimizer(model, kind, lr=0.1, weight_decay=0.01)
        assert isinstance(opt, ValueOptimizer) and type(opt.optimizer) is cls
        assert opt.optimizer.params == model.parameters()
        opt.lr = 0.02
        assert opt.optimizer.lr == 0.02
        with pytest.raises(ConfigError, match="learning rate"):
            opt.lr = -1.0
    model.forward(*batches(1, B=4)[0])
    model.backward()
    opt.step()
    assert opt.steps == 1
    opt.zero_grad()
    assert all(v.grad == 0.0 for v in model.parameters())
    # the layout saved runs have: each buffer one float64 vector over every Value
    state = make_optimizer(model, "adamw").state_dict()
    assert set(state) == {"step", "exp_avg.0", "exp_avg_sq.0"}
    assert state["step"].dtype == np.int64 and state["step"].shape == ()
    assert state["exp_avg.0"].dtype == np.float64 and state["exp_avg.0"].shape == (n,)
    state["exp_avg.0"] = np.zeros(n - 1)
    with pytest.raises(CheckpointError, match="exp_avg.0"):
        make_optimizer(model, "adamw").load_state_dict(state)


def test_value_adamw_gives_the_numbers_of_the_numpy_adamw():
    """tinylm.micrograd.nn.AdamW is the numpy AdamW's float64 update to the bit: over
    many steps, with weight decay, gradients from 1e-6 to 100 (some exactly 0), and
    the learning rate changed before every step as the trainer does."""
    rs = np.random.RandomState(3)
    start = rs.randn(50)
    values = [Value(float(x)) for x in start]
    param = Parameter(start.copy())
    settings = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, ref = nn.AdamW(values, **settings), AdamW([param], **settings)
    for step in range(1000):
        ours.lr = ref.lr = lr_at(step, 1000, 1e-2, "cosine")
        g = rs.randn(50) * 10.0 ** rs.uniform(-6, 2, size=50)
        g[:3] = 0.0
        param.grad = g
        for v, x in zip(values, g.tolist()):
            v.grad = x
        ours.step()
        ref.step()
    assert [v.data for v in values] == param.data.tolist()
    assert ours.m == ref.exp_avg[0].tolist() and ours.v == ref.exp_avg_sq[0].tolist()


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_value_sgd_gives_the_numbers_of_the_numpy_sgd(wd):
    rs = np.random.RandomState(4)
    start = rs.randn(50)
    values = [Value(float(x)) for x in start]
    param = Parameter(start.copy())
    ours, ref = nn.SGD(values, lr=0.5, weight_decay=wd), SGD([param], lr=0.5, weight_decay=wd)
    for step in range(300):
        ours.lr = ref.lr = lr_at(step, 300, 0.5, "step")
        g = rs.randn(50) * 10.0 ** rs.uniform(-6, 1, size=50)
        param.grad = g
        for v, x in zip(values, g.tolist()):
            v.grad = x
        ours.step()
        ref.step()
    assert [v.data for v in values] == param.data.tolist()
    assert values[0].data != start[0]


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_matches_torch_to_the_bit(wd):
    rs = np.random.RandomState(2)
    ours = Parameter(rs.randn(500).astype(np.float32))
    ref = torch.tensor(ours.data.copy(), requires_grad=True)
    opt, topt = SGD([ours], lr=50.0, weight_decay=wd), torch.optim.SGD([ref], lr=50.0, weight_decay=wd)
    for _ in range(20):
        g = (rs.randn(500) * 1e-3).astype(np.float32)
        ours.grad, ref.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    np.testing.assert_array_equal(ours.data, ref.detach().numpy())


def test_bigram_full_batch_gradient_descent_numpy_vs_torch():
    config = ModelConfig("bigram", vocab_size=27, context=1)
    X, Y = batches(1, B=500)[0]
    X = X[:, :1]
    models = [build_model(config, b, RNG(3)) for b in ("numpy", "torch-module")]
    losses = [train(m, make_optimizer(m, "sgd", lr=50.0), [(X, Y)] * 30) for m in models]
    np.testing.assert_allclose(losses[0], losses[1], atol=1e-5)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-module", "micrograd"])
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_state_round_trip_resumes_exactly(backend, kind):
    config = ModelConfig("mlp", vocab_size=27, context=3, n_embd=2, n_hidden=4) \
        if backend == "micrograd" else CONFIG
    data = batches(6, B=4 if backend == "micrograd" else 32)
    straight = build_model(config, backend, RNG(4))
    train(straight, make_optimizer(straight, kind, 1e-2, weight_decay=0.01), data)

    first = build_model(config, backend, RNG(4))
    opt = make_optimizer(first, kind, 1e-2, weight_decay=0.01)
    train(first, opt, data[:3])
    model_state, opt_state = first.state_dict(), opt.state_dict()
    assert int(opt_state["step"]) == 3
    assert all(isinstance(a, np.ndarray) for a in opt_state.values())
    resumed = build_model(config, backend, RNG(999))
    resumed.load_state_dict(model_state)
    opt2 = make_optimizer(resumed, kind, 1e-2, weight_decay=0.01)
    opt2.load_state_dict(opt_state)
    train(resumed, opt2, data[3:])
    assert max_diff(straight.state_dict(), resumed.state_dict()) == 0.0


def test_optimizer_state_moves_between_numpy_and_torch():
    data = batches(10)
    a = build_model(CONFIG, "numpy", RNG(5))
    opt_a = make_optimizer(a, "adamw", 1e-2)
    train(a, opt_a, data[:5])
    b = build_model(CONFIG, "torch", RNG(6))
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer(b, "adamw", 1e-2)
    opt_b.load_state_dict(opt_a.state_dict())
    train(a, opt_a, data[5:])
    train(b, opt_b, data[5:])
    assert max_diff(a.state_dict(), b.state_dict()) < 1e-6
    assert set(opt_a.state_dict()) == set(opt_b.state_dict())


def test_load_state_dict_refuses_a_mismatch():
    model = build_model(CONFIG, "numpy", RNG(1))
    opt = make_optimizer(model, "adamw", 1e-3)
    state = opt.state_dict()
    state["exp_avg.0"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="exp_avg.0"):
        opt.load_state_dict(state)
    with pytest.raises(CheckpointError):
        opt.load_state_dict({"step": np.array(1)})


@pytest.mark.parametrize("kind,wd", [("adamw", 0.0), ("adamw", 1e-4), ("sgd", 0.0), ("sgd", 0.01)])
def test_the_torch_backends_optimizer_is_torch_optim_to_the_bit(kind, wd):
    """The update is called without torch.optim (no torch._dynamo on the start path): the
    numbers of torch.optim's fused AdamW and of its SGD."""
    data = batches(200)
    schedule = lambda step: lr_at(step, 200, 1e-2, "cosine")  # noqa: E731
    ours, theirs = build_model(CONFIG, "torch", RNG(1)), build_model(CONFIG, "torch", RNG(1))
    reference = (torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=wd, fused=True)
                 if kind == "adamw" else
                 torch.optim.SGD(theirs.parameters(), lr=1e-2, weight_decay=wd, foreach=False))
    opt = make_optimizer(ours, kind, 1e-2, weight_decay=wd)
    for step, (X, Y) in enumerate(data):
        opt.lr = schedule(step)
        for group in reference.param_groups:
            group["lr"] = schedule(step)
        for model, o in ((ours, opt), (theirs, reference)):
            model.forward(X, Y)
            model.backward()
            o.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert np.array_equal(a, b), name
    if kind == "adamw":
        for i, p in enumerate(theirs.parameters()):
            assert np.array_equal(opt.state_dict()[f"exp_avg_sq.{i}"],
                                  reference.state[p]["exp_avg_sq"].numpy())


def test_lr_is_settable_and_zero_grad_clears():
    for backend in ("numpy", "torch"):
        model = build_model(CONFIG, backend, RNG(1))
        opt = make_optimizer(model, "sgd", lr=0.1)
        opt.lr = 0.01
        assert opt.lr == 0.01
        model.forward(*batches(1)[0])
        model.backward()
        opt.zero_grad()
        for p in model.parameters():
            assert p.grad is None or not np.any(np.asarray(p.grad))


def test_bad_optimizer_settings():
    model = build_model(CONFIG, "numpy", RNG(1))
    with pytest.raises(ConfigError, match="optimizer"):
        make_optimizer(model, "lbfgs")
    with pytest.raises(ConfigError, match="learning rate"):
        make_optimizer(model, "sgd", lr=float("nan"))
    with pytest.raises(ConfigError, match="weight decay"):
        make_optimizer(model, "adamw", weight_decay=-1)
    with pytest.raises(ConfigError, match="betas"):
        AdamW(model.parameters(), betas=(1.0, 0.999))
    with pytest.raises(ConfigError, match="no parameters"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError):
        SGD([model.parameters()[0], Value(1.0)], lr=0.1)
    with pytest.raises(TypeError, match="micrograd"):
        AdamW([Value(1.0)])


def test_schedules():
    assert [lr_at(s, 10, 0.1) for s in (0, 5, 9)] == [0.1, 0.1, 0.1]
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(25, 100, 0.1, "cosine") == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-15)
    cos = [lr_at(s, 100, 0.1, "cosine") for s in range(100)]
    assert all(a > b for a, b in zip(cos, cos[1:]))
    step = [lr_at(s, 200, 0.1, "step") for s in range(200)]
    assert step[:150] == [0.1] * 150 and step[150:] == [pytest.approx(0.01)] * 50
    assert lr_at(49, 100, 1.0, "step", drop_at=0.5, drop_factor=0.5) == 1.0
    assert lr_at(50, 100, 1.0, "step", drop_at=0.5, drop_factor=0.5) == 0.5
    with pytest.raises(ConfigError, match="schedule"):
        lr_at(0, 10, 0.1, "linear")
    with pytest.raises(ConfigError, match="steps"):
        lr_at(0, 0, 0.1, "cosine")


def test_warmup_climbs_linearly_then_the_schedule_runs_over_the_remaining_steps():
    assert [lr_at(s, 100, 0.1, warmup=4) for s in range(6)] == \
        [pytest.approx(x) for x in (0.025, 0.05, 0.075, 0.1, 0.1, 0.1)]
    cos = [lr_at(s, 100, 0.1, "cosine", warmup=10) for s in range(100)]
    assert cos[9] == pytest.approx(0.1) and cos[10] == pytest.approx(0.1)  # the peak, twice
    assert cos[55] == pytest.approx(0.05)  # half-way through the 90 decaying steps
    assert all(a > b for a, b in zip(cos[10:], cos[11:]))
    assert lr_at(150, 200, 0.1, "step", warmup=20) == pytest.approx(0.01)  # drop point unchanged
    with pytest.raises(ConfigError, match="warmup"):
        lr_at(0, 10, 0.1, warmup=10)
