"""numpy, raw-tensor and nn.Module backends: same weights in, same numbers out (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tinylm.layers import numpy_layers as nl
from tinylm.layers import torch_layers as tl
from tinylm.layers import torch_modules as tm
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG

TORCH_BACKENDS = ("torch", "torch-module")


def batch(V: int, T: int, B: int = 32, seed: int = 0):
    rs = np.random.RandomState(seed)
    return rs.randint(0, V, size=(B, T)), rs.randint(0, V, size=B)


@pytest.mark.parametrize("config", [
    ModelConfig("mlp", vocab_size=27, context=3, n_embd=10, n_hidden=64),
    ModelConfig("mlp", vocab_size=40, context=5, n_embd=6, n_hidden=100),
    ModelConfig("bigram", vocab_size=27, context=1),
])
def test_backends_agree_on_logits_loss_and_every_gradient(config):
    X, Y = batch(config.vocab_size, config.context)
    ref = build_model(config, "numpy", RNG(7))
    logits, loss = ref.forward(X, Y)
    ref.backward()
    grads = {p.name: p.grad for p in ref.parameters()}
    for backend in TORCH_BACKENDS:
        model = build_model(config, backend, RNG(7))
        t_logits, t_loss = model.forward(X, Y)
        model.backward()
        assert isinstance(t_loss, torch.Tensor) and t_loss.dtype == torch.float32
        np.testing.assert_allclose(t_logits.detach().numpy(), logits, rtol=1e-5, atol=1e-6)
        assert t_loss.item() == pytest.approx(loss, abs=1e-6)
        names = list(model.state_dict())
        assert names == list(grads)
        for name, p in zip(names, model.parameters()):
            assert p.grad.dtype == torch.float32
            np.testing.assert_allclose(p.grad.numpy(), grads[name], rtol=1e-4, atol=1e-7,
                                       err_msg=f"{backend} {name}")


def test_raw_backend_has_no_modules_and_module_backend_is_idiomatic():
    config = ModelConfig("mlp", vocab_size=27)
    raw = build_model(config, "torch", RNG(1))
    assert not any(isinstance(layer, nn.Module) for layer in raw.layers)
    assert all(p.requires_grad and p.is_leaf for p in raw.parameters())
    mod = build_model(config, "torch-module", RNG(1))
    assert isinstance(mod.net, nn.Sequential)
    assert [type(m) for m in mod.net] == [nn.Embedding, nn.Flatten, nn.Linear, nn.Tanh, nn.Linear]
    assert [n for n, _ in mod.net.named_parameters()] == [
        name.removeprefix("layers.") for name in mod.state_dict()]


def test_state_dicts_are_numpy_float32_and_cross_load():
    config = ModelConfig("mlp", vocab_size=27, n_hidden=32)
    src = build_model(config, "torch-module", RNG(3))
    X, Y = batch(27, 3)
    src.forward(X, Y)
    src.backward()
    with torch.no_grad():
        for p in src.parameters():
            p -= 0.5 * p.grad  # move away from the initial weights
    state = src.state_dict()
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in state.values())
    assert state["layers.2.weight"].shape == (32, 30)  # (out, in) as in PyTorch
    want = src.forward(X)[0].detach().numpy()
    for backend in ("numpy", "torch"):
        dst = build_model(config, backend, RNG(99))
        dst.load_state_dict(state)
        got = dst.forward(X)[0]
        got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_backward_gives_fresh_gradients_and_accepts_tensors(backend):
    model = build_model(ModelConfig("mlp", vocab_size=27, n_hidden=16), backend, RNG(5))
    X, Y = batch(27, 3)
    model.forward(torch.from_numpy(X), torch.from_numpy(Y))
    model.backward()
    first = [p.grad.clone() for p in model.parameters()]
    model.forward(X, Y)
    model.backward()
    for a, p in zip(first, model.parameters()):
        assert torch.equal(a, p.grad)
    logits, loss = model.forward(X)
    assert loss is None and logits.shape == (32, 27)
    with pytest.raises(RuntimeError):
        model.backward()


def test_linear_on_three_axes_and_without_bias():
    rs = np.random.RandomState(0)
    x = rs.randn(4, 5, 6).astype(np.float32)
    W = rs.randn(3, 6).astype(np.float32)
    b = rs.randn(3).astype(np.float32)
    raw = tl.Linear(6, 3)
    with torch.no_grad():
        raw.weight.copy_(torch.from_numpy(W))
        raw.bias.copy_(torch.from_numpy(b))
    ours = nl.Linear(6, 3)
    ours.weight.data[...], ours.bias.data[...] = W, b
    ref = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b))
    np.testing.assert_allclose(raw(torch.from_numpy(x)).detach().numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours(x), ref.numpy(), rtol=1e-5, atol=1e-6)
    nobias = tl.Linear(6, 3, bias=False)
    assert nobias.bias is None and len(nobias.parameters()) == 1
    assert tm.Linear(6, 3, bias=False).bias is None


def test_raw_cross_entropy_is_stable_and_matches_pytorch():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [3.0, 1.0, 2.0]], requires_grad=True)
    y = torch.tensor([2, 0])
    ours = tl.cross_entropy(logits, y)
    ref = torch.nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(ours) and ours.item() == pytest.approx(ref.item(), rel=1e-6)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_train_eval_reaches_the_layers():
    for backend in TORCH_BACKENDS:
        model = build_model(ModelConfig("mlp", vocab_size=27), backend, RNG(1))
        model.eval()
        assert not model.training and not any(layer.training for layer in model.layers)
        model.train()
        assert all(layer.training for layer in model.layers)


SEQUENCE_LAYERS = {
    "layer norm": (lambda m: m.LayerNorm(8), (3, 5, 8)),
    "gelu": (lambda m: m.GELU(), (3, 5, 8)),
    "attention, 1 head": (lambda m: m.CausalSelfAttention(8, 1), (3, 5, 8)),
    "attention, 4 heads": (lambda m: m.CausalSelfAttention(8, 4), (3, 7, 8)),
    "block": (lambda m: m.Block(8, 2), (3, 6, 8)),
    "rnn": (lambda m: m.RNN(8, 6), (3, 5, 8)),
    "gru": (lambda m: m.GRU(8, 6), (3, 5, 8)),
}


@pytest.mark.parametrize("kind", list(SEQUENCE_LAYERS))
def test_sequence_layers_agree_on_outputs_and_gradients_across_backends(kind):
    """The numpy layer with its hand-written backward, the raw-tensor one and the nn.Module,
    given the same float32 weights and input, give the same output and gradients."""
    make, shape = SEQUENCE_LAYERS[kind]
    rs = np.random.RandomState(3)
    ref = make(nl)
    for _, p in ref.named_parameters():
        p.data[...] = 0.5 * rs.randn(*p.data.shape)
    x = rs.randn(*shape).astype(np.float32)
    out = ref(x)
    R = rs.randn(*out.shape).astype(np.float32)
    dx = ref.backward(R)
    grads = {name: p.grad for name, p in ref.named_parameters()}
    for module in (tl, tm):
        layer = make(module)
        params = dict(layer.named_parameters())
        assert list(params) == list(grads)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(torch.from_numpy(dict(ref.named_parameters())[name].data))
        xt = torch.from_numpy(x).requires_grad_()
        t_out = layer(xt)
        (t_out * torch.from_numpy(R)).sum().backward()
        np.testing.assert_allclose(t_out.detach().numpy(), out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-4, atol=1e-5)
        for name, p in params.items():
            np.testing.assert_allclose(p.grad.numpy(), grads[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{module.__name__} {name}")


SEQUENCE_MODELS = {
    "transformer": lambda m: m.Transformer(11, 8, 16, 4, 2),
    "rnn": lambda m: m.RecurrentLM(11, 8, 12, "rnn"),
    "gru": lambda m: m.RecurrentLM(11, 8, 12, "gru"),
}


def _sequence_batch(rs, B=4, T=7, V=11):
    idx = rs.randint(0, V, size=(B, T))
    targets = rs.randint(0, V, size=(B, T))
    targets[1, 4:] = targets[3, 2:] = -1  # padding: no prediction scored there
    return idx, targets


@pytest.mark.parametrize("kind", list(SEQUENCE_MODELS))
def test_sequence_models_agree_on_logits_loss_and_gradients_across_backends(kind):
    """numpy with its hand-written backward, raw tensors and nn.Modules, the same float32
    weights: the same logits at every position, the same loss with padding ignored, and
    the same gradients; padding positions give no gradient."""
    rs = np.random.RandomState(4)
    ref = SEQUENCE_MODELS[kind](nl)
    for _, p in ref.named_parameters():
        p.data[...] = 0.3 * rs.randn(*p.data.shape)
    idx, targets = _sequence_batch(rs)
    logits = ref(idx)
    criterion = nl.SequenceCrossEntropy()
    loss = criterion.forward(logits, targets)
    dlogits = criterion.backward()
    assert logits.shape == (4, 7, 11) and not dlogits[1, 4:].any() and not dlogits[3, 2:].any()
    ref.backward(dlogits)
    grads = {name: p.grad for name, p in ref.named_parameters()}
    for module in (tl, tm):
        model = SEQUENCE_MODELS[kind](module)
        params = dict(model.named_parameters())
        assert list(params) == list(grads)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(torch.from_numpy(dict(ref.named_parameters())[name].data))
        t_logits = model(torch.from_numpy(idx))
        t_loss = module.sequence_cross_entropy(t_logits, torch.from_numpy(targets))
        t_loss.backward()
        np.testing.assert_allclose(t_logits.detach().numpy(), logits, rtol=1e-5, atol=1e-5)
        assert t_loss.item() == pytest.approx(loss, abs=1e-6)
        for name, p in params.items():
            np.testing.assert_allclose(p.grad.numpy(), grads[name], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{module.__name__} {name}")


@pytest.mark.parametrize("kind", list(SEQUENCE_MODELS))
def test_sequence_model_weights_load_into_a_plain_torch_module(kind):
    """The numpy model's parameter names are PyTorch's (``blocks.0.attn.qkv.weight``): its
    arrays load, strictly, into the nn.Module version, which then gives the same logits."""
    rs = np.random.RandomState(5)
    ref = SEQUENCE_MODELS[kind](nl)
    for _, p in ref.named_parameters():
        p.data[...] = 0.3 * rs.randn(*p.data.shape)
    model = SEQUENCE_MODELS[kind](tm)
    model.load_state_dict({name: torch.from_numpy(p.data) for name, p in ref.named_parameters()})
    idx, _ = _sequence_batch(rs)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(idx)).numpy(), ref(idx),
                                   rtol=1e-5, atol=1e-5)
    if kind == "transformer":
        assert "blocks.1.attn.qkv.weight" in model.state_dict()


def test_a_transformer_refuses_more_positions_than_its_block_size():
    from tinylm.errors import ConfigError

    for module in (nl, tl, tm):
        model = module.Transformer(11, 4, 8, 2, 1)
        idx = np.zeros((2, 5), dtype=np.int64)
        with pytest.raises(ConfigError, match="block size 4"):
            model(idx if module is nl else torch.from_numpy(idx))
