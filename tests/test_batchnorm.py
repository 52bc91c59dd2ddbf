"""BatchNorm1d in every backend against torch.nn.BatchNorm1d (float64) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinylm.errors import ConfigError  # noqa: E402
from tinylm.layers import numpy_layers as npl  # noqa: E402
from tinylm.layers import torch_layers as tl  # noqa: E402
from tinylm.layers import torch_modules as tm  # noqa: E402

from gradcheck import finite_difference  # noqa: E402

SHAPES = [(16, 5), (4, 6, 5)]


def _reference(C: int, weight: np.ndarray, bias: np.ndarray, eps=1e-5, momentum=0.1):
    ref = torch.nn.BatchNorm1d(C, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(weight))
        ref.bias.copy_(torch.from_numpy(bias))
    return ref


def _ref_forward(ref, x: torch.Tensor) -> torch.Tensor:
    # nn.BatchNorm1d wants channels on axis 1: (B, T, C) -> (B, C, T) and back
    return ref(x) if x.ndim == 2 else ref(x.transpose(1, 2)).transpose(1, 2)


def _numpy_bn(C: int, rng: np.random.Generator, **kw) -> npl.BatchNorm1d:
    bn = npl.BatchNorm1d(C, dtype=np.float64, **kw)
    bn.weight.data = 1.0 + rng.standard_normal(C)
    bn.bias.data = rng.standard_normal(C)
    return bn


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_numpy_forward_backward_match_torch(shape, training):
    rng = np.random.default_rng(0)
    C = shape[-1]
    bn = _numpy_bn(C, rng, eps=1e-3, momentum=0.3)
    ref = _reference(C, bn.weight.data, bn.bias.data, eps=1e-3, momentum=0.3)
    if not training:
        # eval mode reads the running statistics: make them interesting first
        for _ in range(3):
            x = rng.standard_normal(shape) * 2 + 0.5
            bn.forward(x)
            _ref_forward(ref, torch.from_numpy(x))
        bn.eval()
        ref.eval()
    x = rng.standard_normal(shape) * 3 + 1
    dout = rng.standard_normal(shape)
    out = bn.forward(x)
    dx = bn.backward(dout)
    xt = torch.from_numpy(x).requires_grad_()
    out_ref = _ref_forward(ref, xt)
    out_ref.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, out_ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad, ref.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.bias.grad, ref.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, ref.running_mean.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(1)
    C = shape[-1]
    bn = _numpy_bn(C, rng)
    x = rng.standard_normal(shape) * 2
    R = rng.standard_normal(shape)  # loss = sum(out * R), so dout = R

    def loss() -> float:
        saved = bn.running_mean, bn.running_var
        value = float((bn.forward(x) * R).sum())
        bn.running_mean, bn.running_var = saved
        return value

    loss()
    dx = bn.backward(R)
    dw, db = bn.weight.grad.copy(), bn.bias.grad.copy()
    for arr, analytic in ((x, dx), (bn.weight.data, dw), (bn.bias.data, db)):
        picks, numeric = finite_difference(loss, arr, n=arr.size)
        np.testing.assert_allclose(analytic.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-7)


def test_running_statistics_use_unbiased_variance():
    x = np.array([[1.0], [2.0], [4.0], [9.0]])
    bn = npl.BatchNorm1d(1, momentum=0.5, dtype=np.float64)
    out = bn.forward(x)
    assert bn.running_mean[0] == pytest.approx(0.5 * 0 + 0.5 * 4.0)
    assert bn.running_var[0] == pytest.approx(0.5 * 1 + 0.5 * np.var(x, ddof=1))
    # ...while the batch itself is normalised with the biased variance
    np.testing.assert_allclose(out, (x - 4.0) / np.sqrt(np.var(x) + 1e-5))


@pytest.mark.parametrize("module", [npl, tl, tm], ids=["numpy", "torch", "torch-module"])
def test_eval_mode_never_changes_running_statistics(module):
    bn = module.BatchNorm1d(3)
    rng = np.random.default_rng(2)
    to = (lambda a: a) if module is npl else (lambda a: torch.from_numpy(a))
    bn(to(rng.standard_normal((8, 3)).astype(np.float32)))
    before = [np.array(b) if module is npl else b.clone() for b in (bn.running_mean, bn.running_var)]
    bn.eval()
    for _ in range(3):
        bn(to((rng.standard_normal((8, 2, 3)) * 5).astype(np.float32)))
    bn(to(rng.standard_normal((1, 3)).astype(np.float32)))  # a batch of one is fine in eval mode
    after = [bn.running_mean, bn.running_var]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("module", [npl, tl, tm], ids=["numpy", "torch", "torch-module"])
def test_training_needs_two_examples_per_channel(module):
    bn = module.BatchNorm1d(3)
    x = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(ConfigError, match="at least 2 examples"):
        bn(x if module is npl else torch.from_numpy(x))


@pytest.mark.parametrize("module", [tl, tm], ids=["torch", "torch-module"])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_backends_match_numpy_float32(module, shape):
    rng = np.random.default_rng(3)
    C = shape[-1]
    bn = npl.BatchNorm1d(C, momentum=0.2)
    other = module.BatchNorm1d(C, momentum=0.2)
    w = (1 + rng.standard_normal(C) * 0.3).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    bn.weight.data, bn.bias.data = w.copy(), b.copy()
    with torch.no_grad():
        other.weight.copy_(torch.from_numpy(w))
        other.bias.copy_(torch.from_numpy(b))
    for mode in ("train", "train", "eval"):
        getattr(bn, mode)()
        getattr(other, mode)()
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)
        out = bn.forward(x)
        dx = bn.backward(dout)
        xt = torch.from_numpy(x).requires_grad_()
        out_t = other(xt)
        out_t.backward(torch.from_numpy(dout))
        np.testing.assert_allclose(out_t.detach().numpy(), out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(other.weight.grad.numpy(), bn.weight.grad, rtol=1e-4, atol=1e-5)
        other.weight.grad = None
        other.bias.grad = None
        np.testing.assert_allclose(other.running_mean.numpy(), bn.running_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.running_var.numpy(), bn.running_var, rtol=1e-5, atol=1e-6)


def test_buffers_and_parameters_are_named_like_torch():
    bn = npl.BatchNorm1d(4)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]
    assert bn.running_mean.dtype == np.float32
    module_names = [n for n, _ in tm.BatchNorm1d(4).named_buffers()]
    assert module_names == ["running_mean", "running_var"]   # no num_batches_tracked
