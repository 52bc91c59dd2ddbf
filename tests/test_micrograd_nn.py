"""Layers, MLP, cross-entropy and the optimizers against PyTorch float64, and the initialisation order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinylm.errors import CheckpointError, ConfigError
from tinylm.micrograd.engine import Value
from tinylm.micrograd.nn import MLP, SGD, AdamW, Linear, Module, Tanh, cross_entropy
from tinylm.rng import RNG


def linears(model: MLP) -> list[Linear]:
    return [layer for layer in model.layers if isinstance(layer, Linear)]


def test_weights_are_drawn_in_order_with_fan_in_scaling():
    model = MLP(2, [3, 2], rng=RNG(7))
    rng = RNG(7)
    for layer, nin in zip(linears(model), (2, 3)):
        for row, b in zip(layer.weight, layer.bias):  # neuron by neuron
            expected = [rng.uniform(-1, 1) * nin**-0.5 for _ in range(nin)]
            assert [w.data for w in row] == expected
            assert b.data == 0.0
    assert len(model.parameters()) == 3 * 3 + 2 * 4


def test_tanh_between_linears_and_none_after_the_last():
    model = MLP(2, [4, 4, 3], rng=RNG(1))
    assert [type(layer) for layer in model.layers] == [Linear, Tanh, Linear, Tanh, Linear]
    assert repr(model) == "MLP(Linear(2, 4), Tanh(), Linear(4, 4), Tanh(), Linear(4, 3))"


def test_linear_always_returns_a_list():
    out = Linear(2, 1, rng=RNG(1))([0.5, -0.5])
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], Value)
    assert out[0].op == "w·x+b"


def test_linear_refuses_the_wrong_number_of_inputs():
    layer = Linear(3, 2, rng=RNG(1))
    with pytest.raises(ValueError, match="got 2 inputs for 3 weights"):
        layer([1.0, 2.0])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_sizes_must_be_positive_ints(bad):
    with pytest.raises(ValueError):
        Linear(bad, 2, rng=RNG(1))
    with pytest.raises(ValueError):
        Linear(2, bad, rng=RNG(1))


def test_mlp_needs_a_layer():
    with pytest.raises(ValueError):
        MLP(2, [], rng=RNG(1))


def test_linear_without_rng_or_bias():
    layer = Linear(2, 3)
    assert all(w.data == 0.0 for w in layer.parameters()) and len(layer.parameters()) == 9
    no_bias = Linear(2, 3, bias=False)
    assert no_bias.bias is None and len(no_bias.parameters()) == 6
    for row, w in zip(no_bias.weight, [[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]]):
        for v, x in zip(row, w):
            v.data = x
    x = [Value(3.0), Value(-2.0)]
    out = no_bias(x)
    assert [v.data for v in out] == [-1.0, 2.0, 0.5]
    sum(out, Value(0.0)).backward()
    assert [v.grad for v in x] == [1.5, 1.5]
    assert [w.grad for row in no_bias.weight for w in row] == [3.0, -2.0] * 3


def test_layers_act_on_the_last_axis_of_a_batch():
    layer, tanh = Linear(3, 2, rng=RNG(4)), Tanh()
    batch = [[[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]], [[-0.3, 0.8, 0.1], [1.0, 1.0, -1.0]]]   # (2, 2, 3)
    out = tanh(layer(batch))                                                             # (2, 2, 2)
    for rows_in, rows_out in zip(batch, out):
        for x, y in zip(rows_in, rows_out):
            assert [v.data for v in y] == [v.data for v in tanh(layer(x))]
    assert [v.data for v in tanh([Value(0.5), Value(-20.0)])] == [math.tanh(0.5), -1.0]


def test_zero_grad_clears_every_parameter():
    model = MLP(2, [3, 2], rng=RNG(3))
    cross_entropy(model([0.3, -0.2]), 1).backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0 for p in model.parameters())
    assert Module().parameters() == []


def _torch_mlp(model: MLP) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same weights as float64 tensors, one (W, b) per Linear."""
    return [
        (
            torch.tensor([[w.data for w in row] for row in layer.weight], dtype=torch.float64,
                         requires_grad=True),
            torch.tensor([b.data for b in layer.bias], dtype=torch.float64, requires_grad=True),
        )
        for layer in linears(model)
    ]


def test_mlp_forward_and_backward_match_torch():
    model = MLP(3, [5, 4, 3], rng=RNG(11))
    points = [([0.5, -1.0, 2.0], 0), ([-0.3, 0.8, 0.1], 2), ([1.5, 1.5, -1.5], 1)]
    total = sum((cross_entropy(model(x), y) for x, y in points), Value(0.0)) * (1 / len(points))
    total.backward()

    params = _torch_mlp(model)
    h = torch.tensor([x for x, _ in points], dtype=torch.float64)
    for i, (W, b) in enumerate(params):
        h = h @ W.T + b
        if i < len(params) - 1:
            h = torch.tanh(h)
    loss = F.cross_entropy(h, torch.tensor([y for _, y in points]))
    loss.backward()

    assert total.data == pytest.approx(loss.item(), rel=1e-12)
    for layer, (W, b) in zip(linears(model), params):
        for j, (row, bias) in enumerate(zip(layer.weight, layer.bias)):
            assert [w.grad for w in row] == pytest.approx(W.grad[j].tolist(), rel=1e-9, abs=1e-12)
            assert bias.grad == pytest.approx(b.grad[j].item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "logits, target",
    [
        ([1.0, 2.0, 3.0], 0),
        ([1.0, 2.0, 3.0], 2),
        ([0.0, 0.0], 1),
        ([1000.0, -1000.0, 0.0], 1),  # far beyond what exp can hold
        ([-1000.0, -1001.0, -999.0], 0),
        ([50.0, 50.0 + 1e-9, -3.0], 0),
        ([7.5], 0),
    ],
)
def test_cross_entropy_matches_torch_and_is_stable(logits, target):
    vs = [Value(x) for x in logits]
    loss = cross_entropy(vs, target)
    loss.backward()
    t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(t[None], torch.tensor([target]))
    ref.backward()
    assert math.isfinite(loss.data)
    assert loss.data == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    assert [v.grad for v in vs] == pytest.approx(t.grad.tolist(), rel=1e-12, abs=1e-15)


def test_cross_entropy_is_one_node_over_the_logits():
    vs = [Value(1.0), Value(2.0)]
    loss = cross_entropy(vs, 1)
    assert loss.parents == tuple(vs) and loss.op == "cross_entropy"


@pytest.mark.parametrize("target", [-1, 3])
def test_cross_entropy_refuses_a_target_out_of_range(target):
    with pytest.raises(ValueError, match="not a class"):
        cross_entropy([Value(0.0)] * 3, target)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4),
        dict(lr=1e-3),  # torch's defaults
        dict(lr=0.05, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.5),
    ],
)
def test_adamw_matches_torch_over_many_steps(kwargs):
    start = [0.5, -1.25, 2.0, 0.0, 1e-3]
    params = [Value(x) for x in start]
    ours = AdamW(params, **kwargs)
    tparams = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    theirs = torch.optim.AdamW([tparams], **kwargs)
    rng = RNG(5)
    for _ in range(25):
        grads = [rng.uniform(-2, 2) for _ in start]
        grads[3] = 0.0  # a parameter with no gradient still decays
        for p, g in zip(params, grads):
            p.grad = g
        tparams.grad = torch.tensor(grads, dtype=torch.float64)
        ours.step()
        theirs.step()
        assert [p.data for p in params] == pytest.approx(tparams.tolist(), rel=1e-12, abs=1e-15)


def test_adamw_leaves_grad_alone():
    p = Value(1.0)
    p.grad = 0.5
    AdamW([p], lr=0.1).step()
    assert p.grad == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(lr=float("nan")), dict(lr=float("inf")), dict(betas=(1.0, 0.9)),
     dict(eps=-1.0), dict(weight_decay=-1.0)],
)
def test_adamw_refuses_bad_hyperparameters(kwargs):
    with pytest.raises(ConfigError):
        AdamW([Value(1.0)], **kwargs)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_matches_torch(weight_decay):
    start = [0.5, -1.25, 2.0, 0.0, 1e-3]
    params = [Value(x) for x in start]
    ours = SGD(params, lr=0.3, weight_decay=weight_decay)
    tparams = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    theirs = torch.optim.SGD([tparams], lr=0.3, weight_decay=weight_decay)
    rng = RNG(6)
    for _ in range(25):
        grads = [rng.uniform(-2, 2) for _ in start]
        for p, g in zip(params, grads):
            p.grad = g
        tparams.grad = torch.tensor(grads, dtype=torch.float64)
        ours.step()
        theirs.step()
    # PyTorch fuses lr * grad into the addition, one rounding less
    assert [p.data for p in params] == pytest.approx(tparams.tolist(), rel=1e-14, abs=1e-15)
    assert ours.steps == 25 and params[0].grad == grads[0]
    with pytest.raises(ConfigError):
        SGD(params, lr=0.1, weight_decay=float("nan"))


def _run(opt, params, grads):
    for g in grads:
        for p, x in zip(params, g):
            p.grad = x
        opt.step()


@pytest.mark.parametrize("make", [lambda ps: AdamW(ps, lr=0.05, weight_decay=0.1),
                                  lambda ps: SGD(ps, lr=0.05, weight_decay=0.1)])
def test_state_dict_resumes_exactly(make):
    rng = RNG(8)
    start = [rng.uniform(-1, 1) for _ in range(6)]
    grads = [[rng.uniform(-1, 1) for _ in start] for _ in range(20)]
    straight = [Value(x) for x in start]
    _run(make(straight), straight, grads)

    first = [Value(x) for x in start]
    opt = make(first)
    _run(opt, first, grads[:10])
    state = opt.state_dict()
    assert state["step"] == 10 and opt.steps == 10
    resumed = [Value(p.data) for p in first]
    opt2 = make(resumed)
    opt2.load_state_dict(state)
    _run(opt2, resumed, grads[10:])
    assert [p.data for p in resumed] == [p.data for p in straight]
    if "exp_avg" in state:  # a copy: stepping on does not change what was saved
        saved = list(state["exp_avg"])
        _run(opt, first, grads[10:11])
        assert state["exp_avg"] == saved != opt.state_dict()["exp_avg"]


def test_load_state_dict_refuses_another_optimizers_state():
    opt = AdamW([Value(1.0), Value(2.0)])
    with pytest.raises(CheckpointError):
        opt.load_state_dict({"step": 3, "exp_avg": [0.0], "exp_avg_sq": [0.0]})
    with pytest.raises(CheckpointError):
        opt.load_state_dict(SGD([Value(1.0), Value(2.0)], lr=0.1).state_dict())
    assert opt.steps == 0 and opt.m == [0.0, 0.0]


def test_optimizer_zero_grad_clears_its_parameters():
    params = [Value(1.0), Value(2.0)]
    (params[0] * params[1]).backward()
    opt = AdamW(params)
    opt.zero_grad()
    assert [p.grad for p in params] == [0.0, 0.0]


def test_a_few_steps_fit_a_tiny_problem():
    model = MLP(2, [8, 2], rng=RNG(3))
    data = [([-1.0, -1.0], 0), ([1.0, 1.0], 0), ([-1.0, 1.0], 1), ([1.0, -1.0], 1)]  # xor
    opt = AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    for _ in range(60):
        loss = sum((cross_entropy(model(x), y) for x, y in data), Value(0.0)) * 0.25
        model.zero_grad()
        loss.backward()
        opt.step()
    assert loss.data < 0.05
