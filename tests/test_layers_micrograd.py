"""The scalar-engine backend against numpy (float32) and PyTorch (float64) on tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinylm.layers import micrograd_layers as ml
from tinylm.micrograd import nn
from tinylm.micrograd.engine import Value
from tinylm.models import ModelConfig, build_model
from tinylm.optim import make_optimizer
from tinylm.rng import RNG

TINY = ModelConfig("mlp", vocab_size=27, context=3, n_embd=2, n_hidden=4)


def tiny_batch(config=TINY, B=4, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randint(0, config.vocab_size, size=(B, config.context)), rs.randint(0, config.vocab_size, size=B)


def flat_grads(model) -> np.ndarray:
    if model.backend == "micrograd":
        return np.array([v.grad for v in model.parameters()])
    return np.concatenate([p.grad.ravel() for p in model.parameters()])


@pytest.mark.parametrize("config", [TINY, ModelConfig("bigram", vocab_size=27, context=2)])
def test_micrograd_model_matches_numpy(config):
    X, Y = tiny_batch(config)
    ref = build_model(config, "numpy", RNG(11))
    mg = build_model(config, "micrograd", RNG(11))
    logits, loss = ref.forward(X, Y)
    m_logits, m_loss = mg.forward(X, Y)
    ref.backward()
    mg.backward()
    assert isinstance(m_loss, float) and m_logits.dtype == np.float64
    np.testing.assert_allclose(m_logits, logits, atol=1e-5)
    assert m_loss == pytest.approx(loss, abs=1e-5)
    np.testing.assert_allclose(flat_grads(mg), flat_grads(ref), atol=1e-5)
    # the same float32 starting weights, held exactly in float64
    for name, a in ref.state_dict().items():
        np.testing.assert_array_equal(mg.state_dict()[name], a.astype(np.float64))


def test_three_adamw_steps_agree_with_numpy():
    X, Y = tiny_batch()
    models = [build_model(TINY, b, RNG(2)) for b in ("numpy", "micrograd")]
    opts = [make_optimizer(m, "adamw", lr=0.1, weight_decay=0.01) for m in models]
    for step in range(3):
        losses = []
        for model, opt in zip(models, opts):
            losses.append(model.forward(X, Y)[1])
            model.backward()
            opt.step()
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    ref, mg = (m.state_dict() for m in models)
    for name in ref:
        np.testing.assert_allclose(mg[name], ref[name], atol=1e-5)


def test_micrograd_gradients_match_torch_float64():
    X, Y = tiny_batch(seed=3)
    mg = build_model(TINY, "micrograd", RNG(4))
    _, loss = mg.forward(X, Y)
    mg.backward()
    state = {k: torch.tensor(v, requires_grad=True) for k, v in mg.state_dict().items()}
    emb, W1, b1, W2, b2 = state.values()
    h = torch.tanh(emb[torch.from_numpy(X)].reshape(4, -1) @ W1.T + b1)
    ref = torch.nn.functional.cross_entropy(h @ W2.T + b2, torch.from_numpy(Y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-13)
    want = np.concatenate([t.grad.numpy().ravel() for t in state.values()])
    np.testing.assert_allclose(flat_grads(mg), want, rtol=1e-10, atol=1e-14)


def test_backward_gives_fresh_gradients():
    X, Y = tiny_batch()
    mg = build_model(TINY, "micrograd", RNG(1))
    mg.forward(X, Y)
    mg.backward()
    first = flat_grads(mg)
    mg.forward(X, Y)
    mg.backward()
    np.testing.assert_array_equal(flat_grads(mg), first)
    assert mg.forward(X)[1] is None
    with pytest.raises(RuntimeError):
        mg.backward()


def test_layers_on_three_axes_and_cross_entropy_stability():
    lin = ml.Linear(2, 3, bias=False)
    assert lin.bias is None and len(lin.parameters()) == 1
    for row, w in zip(lin.weight, [[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]]):
        for v, x in zip(row, w):
            v.data = x
    x = [[[Value(1.0), Value(2.0)], [Value(-1.0), Value(0.0)]]]          # (1, 2, 2)
    out = lin(x)
    assert [[v.data for v in vec] for vec in out[0]] == [[5.0, -2.0, 1.5], [-1.0, 0.0, -0.5]]
    assert [v.data for v in ml.Flatten()(x)[0]] == [1.0, 2.0, -1.0, 0.0]

    logits = [[Value(1000.0), Value(0.0), Value(-1000.0)], [Value(3.0), Value(1.0), Value(2.0)]]
    loss = ml.cross_entropy(logits, [2, 0])
    loss.backward()
    t = torch.tensor([[1000.0, 0.0, -1000.0], [3.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor([2, 0]))
    ref.backward()
    assert loss.data == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose([[v.grad for v in row] for row in logits], t.grad.numpy(), atol=1e-12)
    # the scalar engine's one cross-entropy: a fused node per row, no exp or log nodes
    ops = [node.op for node in loss.topological_order()]
    assert ops.count("cross_entropy") == 2 and "exp" not in ops and "log" not in ops


def test_the_layers_are_the_demos_layers_under_state_dict_names():
    mlp = nn.MLP(4, [3, 2], rng=RNG(5))
    net = ml.Sequential([ml.Linear(4, 3), ml.Tanh(), ml.Linear(3, 2)])
    assert [name for name, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for ours, theirs in zip(net.layers[::2], mlp.layers[::2]):     # the Linears; biases start at 0
        for row, values in zip(ours.weight, theirs.weight):
            for v, w in zip(row, values):
                v.data = w.data
    batch = [[Value(x) for x in row] for row in ([0.5, -1.0, 2.0, 0.3], [0.0, 0.7, -0.2, 1.5])]
    out = net(batch)                                                # (2, 2)
    assert [[v.data for v in row] for row in out] == [[v.data for v in mlp(x)] for x in batch]
    assert out[0][0].op == "w·x+b" and net.layers[1].out[0][0].op == "tanh"


def test_embedding_shares_rows_between_repeats():
    emb = ml.Embedding(3, 2)
    out = emb(np.array([[1, 1], [2, 1]]))
    assert out[0][0] is emb.weight[1] and out[1][1] is emb.weight[1]
    total = sum(v for row in out for vec in row for v in vec)
    total.backward()
    assert [v.grad for v in emb.weight[1]] == [3.0, 3.0]
    assert [v.grad for v in emb.weight[0]] == [0.0, 0.0]
