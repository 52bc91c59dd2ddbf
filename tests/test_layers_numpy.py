"""The hand-written backward passes against PyTorch autograd and finite differences.

Each layer runs in float64 here so both references are sharp: PyTorch
autograd in float64 (to ~1e-12) and central finite differences (to ~1e-6).
The upstream gradient is a random array R, i.e. the loss is sum(out * R).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinylm.errors import ConfigError
from tinylm.layers import numpy_layers as nl

from gradcheck import finite_difference

rs = np.random.RandomState(1234)


def t64(a: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def linear64(n_in, n_out, bias=True):
    layer = nl.Linear(n_in, n_out, bias=bias, dtype=np.float64)
    layer.weight.data[...] = rs.randn(n_out, n_in)
    if bias:
        layer.bias.data[...] = rs.randn(n_out)
    return layer


@pytest.mark.parametrize("shape", [(5, 4), (5, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_autograd_and_finite_differences(shape, bias):
    layer = linear64(4, 6, bias)
    x = rs.randn(*shape)
    R = rs.randn(*shape[:-1], 6)
    out = layer(x)
    dx = layer.backward(R)

    W, xt = t64(layer.weight.data), t64(x)
    ref = xt @ W.T
    if bias:
        b = t64(layer.bias.data)
        ref = ref + b
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, W.grad.numpy(), rtol=1e-10, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12)
    else:
        assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]

    loss = lambda: float((layer.forward(x) * R).sum())  # noqa: E731
    for array, grad in [(x, dx), (layer.weight.data, layer.weight.grad)]:
        picks, fd = finite_difference(loss, array)
        np.testing.assert_allclose(grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def test_embedding_backward_adds_repeated_rows():
    layer = nl.Embedding(7, 3, dtype=np.float64)
    layer.weight.data[...] = rs.randn(7, 3)
    idx = np.array([[0, 3, 3], [3, 6, 0], [1, 1, 1], [3, 3, 3]])  # repeats within and across rows
    R = rs.randn(4, 3, 3)
    out = layer(idx)
    assert layer.backward(R) is None

    W = t64(layer.weight.data)
    ref = torch.nn.functional.embedding(torch.from_numpy(idx), W)
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_array_equal(out, ref.detach().numpy())
    np.testing.assert_allclose(layer.weight.grad, W.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert np.all(layer.weight.grad[[2, 4, 5]] == 0)  # unused rows get no gradient

    picks, fd = finite_difference(lambda: float((layer.forward(idx) * R).sum()), layer.weight.data)
    np.testing.assert_allclose(layer.weight.grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def test_embedding_of_a_single_column_and_flatten():
    layer = nl.Embedding(5, 2)
    layer.weight.data[...] = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert layer(np.array([4, 0])).tolist() == [[8, 9], [0, 1]]        # (B,) -> (B, C)
    flat = nl.Flatten()
    x = rs.randn(3, 4, 2)
    out = flat(x)
    assert out.shape == (3, 8)
    np.testing.assert_array_equal(out[1], np.concatenate([x[1, 0], x[1, 1], x[1, 2], x[1, 3]]))
    R = rs.randn(3, 8)
    np.testing.assert_array_equal(flat.backward(R), R.reshape(3, 4, 2))


def test_tanh_backward():
    layer = nl.Tanh()
    x = rs.randn(6, 5) * 2
    R = rs.randn(6, 5)
    layer(x)
    dx = layer.backward(R)
    xt = t64(x)
    (torch.tanh(xt) * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)
    picks, fd = finite_difference(lambda: float((np.tanh(x) * R).sum()), x)
    np.testing.assert_allclose(dx.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-8)


def test_cross_entropy_backward_and_stability():
    ce = nl.CrossEntropy()
    logits = rs.randn(8, 11) * 3
    targets = rs.randint(0, 11, size=8)
    loss = ce.forward(logits, targets)
    dlogits = ce.backward()
    lt = t64(logits)
    ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(targets))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=1e-10, atol=1e-14)
    picks, fd = finite_difference(lambda: nl.cross_entropy(logits, targets), logits)
    np.testing.assert_allclose(dlogits.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-8)

    # huge logits would overflow exp() without the max shift
    big = np.array([[1000.0, 0.0, -1000.0], [5000.0, 5000.0, 0.0]], dtype=np.float32)
    y = np.array([0, 1])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = ce.forward(big, y)
        grad = ce.backward()
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(big), torch.from_numpy(y))
    assert loss == pytest.approx(ref.item(), abs=1e-6)
    assert np.all(np.isfinite(grad))


def test_sequential_mlp_backward_end_to_end():
    """Embedding -> Flatten -> Linear -> Tanh -> Linear -> cross-entropy, float64."""
    V, T, E, H, B = 9, 3, 4, 8, 6
    emb = nl.Embedding(V, E, dtype=np.float64)
    emb.weight.data[...] = rs.randn(V, E)
    net = nl.Sequential([emb, nl.Flatten(), linear64(T * E, H), nl.Tanh(), linear64(H, V)])
    idx = rs.randint(0, V, size=(B, T))
    y = rs.randint(0, V, size=B)
    ce = nl.CrossEntropy()
    loss = ce.forward(net(idx), y)
    assert net.backward(ce.backward()) is None

    params = net.parameters()
    tparams = [t64(p.data) for p in params]
    Wemb, W1, b1, W2, b2 = tparams
    h = torch.tanh(Wemb[torch.from_numpy(idx)].reshape(B, -1) @ W1.T + b1)
    ref = torch.nn.functional.cross_entropy(h @ W2.T + b2, torch.from_numpy(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "2.weight", "2.bias",
                                                       "4.weight", "4.bias"]
    # every layer keeps its output and the gradient that reached it
    assert net.layers[3].out.shape == (B, H) and net.layers[3].out_grad.shape == (B, H)
    np.testing.assert_allclose(net.layers[3].out, h.detach().numpy(), rtol=1e-12)


def test_layers_keep_float32_and_overwrite_grads():
    layer = nl.Linear(3, 2)
    layer.weight.data[...] = 1
    x = np.ones((4, 3), dtype=np.float32)
    assert layer(x).dtype == np.float32
    assert layer.backward(np.ones((4, 2), dtype=np.float32)).dtype == np.float32
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(np.ones((4, 2), dtype=np.float32))
    np.testing.assert_array_equal(layer.weight.grad, first)  # set, not accumulated
    assert layer.weight.grad.dtype == np.float32


def test_to_dtype_and_train_eval():
    net = nl.Sequential([nl.Embedding(4, 2), nl.Flatten(), nl.Linear(4, 3)])
    nl.to_dtype(net.layers, np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
    net.eval()
    assert not net.training and not any(layer.training for layer in net.layers)
    net.train()
    assert all(layer.training for layer in net.layers)


# --- the sequence layers: LayerNorm, GELU, causal self-attention -----------------------------


def _randomised(layer, scale: float = 1.0):
    """``layer`` in float64 with every parameter drawn at random (not the 1s and 0s of a start)."""
    nl.to_dtype([layer], np.float64)
    for _, p in layer.named_parameters():
        p.data[...] = scale * rs.randn(*p.data.shape)
    return layer


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 6)])
def test_layer_norm_backward_matches_autograd_and_finite_differences(shape):
    layer = _randomised(nl.LayerNorm(6))
    x = 3 * rs.randn(*shape) + 1
    R = rs.randn(*shape)
    out = layer(x)
    dx = layer.backward(R)
    assert np.allclose(layer.xhat.mean(axis=-1), 0) and np.allclose(layer.xhat.std(axis=-1), 1,
                                                                    atol=1e-5)

    xt, w, b = t64(x), t64(layer.weight.data), t64(layer.bias.data)
    ref = torch.nn.functional.layer_norm(xt, (6,), w, b, eps=1e-5)
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in [(dx, xt), (layer.weight.grad, w), (layer.bias.grad, b)]:
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)

    loss = lambda: float((layer.forward(x) * R).sum())  # noqa: E731
    for array, grad in [(x, dx), (layer.weight.data, layer.weight.grad)]:
        picks, fd = finite_difference(loss, array)
        np.testing.assert_allclose(grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def test_gelu_is_pytorchs_tanh_form_with_its_derivative():
    layer = nl.GELU()
    x = np.concatenate([np.linspace(-8, 8, 40), 2 * rs.randn(30)]).reshape(7, 10)
    R = rs.randn(7, 10)
    out = layer(x)
    dx = layer.backward(R)
    xt = t64(x)
    ref = torch.nn.functional.gelu(xt, approximate="tanh")
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    # and within 5e-4 of the exact x * Phi(x)
    exact = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(out - exact).max() < 5e-4
    picks, fd = finite_difference(lambda: float((layer.forward(x) * R).sum()), x)
    np.testing.assert_allclose(dx.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def _attention_reference(x, layer):
    """Causal multi-head attention in torch float64 from the layer's own weights."""
    B, T, C = x.shape
    nh = layer.n_head
    params = {name: t64(p.data) for name, p in layer.named_parameters()}
    xt = t64(x)
    qkv = xt @ params["qkv.weight"].T + params["qkv.bias"]
    q, k, v = (a.reshape(B, T, nh, C // nh).transpose(1, 2) for a in qkv.split(C, dim=-1))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = y.transpose(1, 2).reshape(B, T, C) @ params["proj.weight"].T + params["proj.bias"]
    return xt, params, out


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_causal_self_attention_backward_matches_autograd_and_finite_differences(n_head):
    layer = _randomised(nl.CausalSelfAttention(8, n_head), scale=0.5)
    assert [name for name, _ in layer.named_parameters()] == [
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    x = rs.randn(3, 5, 8)
    R = rs.randn(3, 5, 8)
    out = layer(x)
    dx = layer.backward(R)
    np.testing.assert_allclose(layer.att.sum(axis=-1), 1, rtol=1e-12)
    assert np.all(np.triu(layer.att[0, 0], k=1) == 0)  # nothing from the future

    xt, params, ref = _attention_reference(x, layer)
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=name)

    loss = lambda: float((layer.forward(x) * R).sum())  # noqa: E731
    for array, grad in [(x, dx), (layer.qkv.weight.data, layer.qkv.weight.grad),
                        (layer.proj.weight.data, layer.proj.weight.grad)]:
        picks, fd = finite_difference(loss, array)
        np.testing.assert_allclose(grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def test_causal_self_attention_reads_no_later_position():
    layer = _randomised(nl.CausalSelfAttention(8, 2), scale=0.5)
    x = rs.randn(2, 6, 8)
    before = layer(x).copy()
    x[:, 4:] += rs.randn(2, 2, 8)  # change the last two positions only
    after = layer(x)
    np.testing.assert_array_equal(after[:, :4], before[:, :4])
    assert not np.allclose(after[:, 4:], before[:, 4:])


def test_children_follow_train_and_eval_and_the_dtype():
    layer = nl.CausalSelfAttention(8, 2)
    layer.eval()
    assert not layer.qkv.training and not layer.proj.training
    layer.train()
    assert layer.qkv.training and layer.proj.training
    nl.to_dtype([layer], np.float64)
    assert {p.data.dtype for p in layer.parameters()} == {np.dtype(np.float64)}
    with pytest.raises(ConfigError, match="multiple of n_head"):
        nl.CausalSelfAttention(8, 3)

    class Holder(nl.Layer):  # a child with buffers of its own
        child_names = ("norm",)

        def __init__(self):
            super().__init__()
            self.norm = nl.BatchNorm1d(3)

    holder = Holder()
    assert [name for name, _ in holder.named_buffers()] == ["norm.running_mean", "norm.running_var"]
    nl.to_dtype([holder], np.float64)
    assert holder.norm.running_var.dtype == np.float64 and holder.norm.weight.data.dtype == np.float64


def _check_against_raw_torch(layer, ref, x, R, out, dx):
    """``layer``'s output and gradients (after forward(x), backward(R)) against autograd of
    the raw-tensor layer ``ref`` (float64) given the same weights, then finite differences."""
    params = dict(ref.named_parameters())
    assert list(params) == [name for name, _ in layer.named_parameters()]
    with torch.no_grad():
        for name, p in layer.named_parameters():
            params[name].copy_(torch.from_numpy(p.data))
    xt = t64(x)
    ref_out = ref(xt)
    (ref_out * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=name)
    loss = lambda: float((layer.forward(x) * R).sum())  # noqa: E731
    for array, grad in [(x, dx)] + [(p.data, p.grad) for _, p in layer.named_parameters()]:
        picks, fd = finite_difference(loss, array, n=8)
        np.testing.assert_allclose(grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-7)


def test_transformer_block_backward_matches_autograd_and_finite_differences():
    from tinylm.layers import torch_layers as tl

    layer = _randomised(nl.Block(8, 2), scale=0.5)
    assert [name for name, _ in layer.named_parameters()] == [
        "ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "ln2.weight", "ln2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
        "mlp.2.bias"]
    x = rs.randn(2, 5, 8)
    R = rs.randn(2, 5, 8)
    out = layer(x)
    dx = layer.backward(R)

    _check_against_raw_torch(layer, tl.Block(8, 2, dtype=torch.float64), x, R, out, dx)


@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_recurrent_backprop_through_time_matches_autograd_and_finite_differences(kind):
    from tinylm.layers import torch_layers as tl

    layer = _randomised(getattr(nl, kind)(5, 4), scale=0.7)
    x = rs.randn(3, 6, 5)
    out = layer(x)
    R = rs.randn(*out.shape)
    dx = layer.backward(R)
    assert out.shape == (3, 6, 4) and dx.shape == x.shape

    _check_against_raw_torch(layer, getattr(tl, kind)(5, 4, dtype=torch.float64), x, R, out, dx)


def test_recurrent_outputs_depend_on_the_past_only():
    for kind in ("RNN", "GRU"):
        layer = _randomised(getattr(nl, kind)(5, 4), scale=0.7)
        x = rs.randn(2, 6, 5)
        before = layer(x).copy()
        x[:, 3:] += 1.0
        after = layer(x)
        np.testing.assert_array_equal(after[:, :3], before[:, :3])
        assert not np.allclose(after[:, 3:], before[:, 3:])


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_sequence_model_backward_end_to_end_matches_autograd_and_finite_differences(kind):
    """The whole numpy model and its padded per-position loss, in float64: every parameter's
    gradient against autograd of the raw-tensor model and against finite differences."""
    from tinylm.layers import torch_layers as tl

    make = {"transformer": lambda m, **kw: m.Transformer(9, 6, 8, 2, 2, **kw),
            "gru": lambda m, **kw: m.RecurrentLM(9, 5, 6, "gru", **kw)}[kind]
    model = _randomised(make(nl), scale=0.4)
    idx = rs.randint(0, 9, size=(3, 6))
    targets = rs.randint(0, 9, size=(3, 6))
    targets[0, 3:] = -1
    criterion = nl.SequenceCrossEntropy()
    loss = criterion.forward(model(idx), targets)
    model.backward(criterion.backward())

    ref = make(tl, dtype=torch.float64)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            params[name].copy_(torch.from_numpy(p.data))
    ref_loss = tl.sequence_cross_entropy(ref(torch.from_numpy(idx)), torch.from_numpy(targets))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=name)

    def f():
        return nl.SequenceCrossEntropy().forward(model(idx), targets)
    for name, p in model.named_parameters():
        picks, fd = finite_difference(f, p.data, n=4)
        np.testing.assert_allclose(p.grad.reshape(-1)[picks], fd, rtol=1e-5, atol=1e-8,
                                   err_msg=name)


# --- dropout: masks from the tinylm RNG --------------------------------------------------------

def _seed_dropout(net, seed: int):
    """Give every Dropout layer in ``net`` (tinylm layers or nn.Modules) one fresh RNG."""
    from tinylm.layers.base import walk
    from tinylm.rng import RNG

    rng = RNG(seed)
    layers = net.modules() if isinstance(net, torch.nn.Module) else walk(net)
    for layer in layers:
        if getattr(layer, "draws_from_rng", False):
            layer.rng = rng
    return rng


def test_dropout_keeps_what_the_rng_says_scales_by_one_over_keep_and_passes_its_gradient():
    from tinylm.rng import RNG

    layer = nl.Dropout(0.25)
    layer.rng = RNG(9)
    x = rs.randn(40, 50)
    out = layer(x)
    coins = RNG(9)
    keep = np.array([coins.random() >= 0.25 for _ in range(x.size)]).reshape(x.shape)
    np.testing.assert_array_equal(out != 0, keep)   # one coin per element, in C order
    np.testing.assert_allclose(out[keep], x[keep] / 0.75, rtol=1e-15)
    assert 0.2 < 1 - keep.mean() < 0.3
    dout = rs.randn(*x.shape)
    np.testing.assert_array_equal(layer.backward(dout), dout * layer.mask)
    layer.eval()
    state = layer.rng.get_state()
    assert layer(x) is x and layer.rng.get_state() == state  # eval: no mask, no draw


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_dropout_drops_the_same_elements_on_every_backend_and_backward_goes_through_it(kind):
    """With the same RNG the numpy, raw-tensor and nn.Module models drop the same
    activations: the same loss, the numpy gradients those of autograd, and of finite
    differences (each evaluation reseeded, so that it sees the same masks)."""
    from tinylm.layers import torch_layers as tl
    from tinylm.layers import torch_modules as tm

    make = {"transformer": lambda m, **kw: m.Transformer(9, 6, 8, 2, 2, dropout=0.3, **kw),
            "gru": lambda m, **kw: m.RecurrentLM(9, 5, 6, "gru", dropout=0.3, **kw)}[kind]
    model = _randomised(make(nl), scale=0.4)
    idx = rs.randint(0, 9, size=(3, 6))
    targets = rs.randint(0, 9, size=(3, 6))
    targets[0, 4:] = -1

    def f():
        _seed_dropout(model, 5)
        return nl.SequenceCrossEntropy().forward(model(idx), targets)
    criterion = nl.SequenceCrossEntropy()
    _seed_dropout(model, 5)
    loss = criterion.forward(model(idx), targets)
    model.backward(criterion.backward())

    ref = make(tl, dtype=torch.float64)
    params = dict(ref.named_parameters())
    module = make(tm).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            params[name].copy_(torch.from_numpy(p.data))
        module.load_state_dict({name: torch.from_numpy(p.data) for name, p in
                                model.named_parameters()}, strict=True)
    _seed_dropout(ref, 5)
    ref_loss = tl.sequence_cross_entropy(ref(torch.from_numpy(idx)), torch.from_numpy(targets))
    ref_loss.backward()
    _seed_dropout(module, 5)
    module_loss = tm.sequence_cross_entropy(module(torch.from_numpy(idx)),
                                            torch.from_numpy(targets))
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    assert loss == pytest.approx(module_loss.item(), rel=1e-12)
    model.eval()
    assert nl.SequenceCrossEntropy().forward(model(idx), targets) != pytest.approx(loss, rel=1e-3)
    model.train()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=name)
        picks, fd = finite_difference(f, p.data, n=3)
        np.testing.assert_allclose(p.grad.reshape(-1)[picks], fd, rtol=1e-5, atol=1e-8,
                                   err_msg=name)
