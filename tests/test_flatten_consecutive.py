"""FlattenConsecutive: shapes, levels, errors, backward, and the three backends agree."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinylm.errors import ConfigError  # noqa: E402
from tinylm.layers import numpy_layers as npl  # noqa: E402
from tinylm.layers import torch_layers as tl  # noqa: E402
from tinylm.layers import torch_modules as tm  # noqa: E402

MODULES = [npl, tl, tm]
IDS = ["numpy", "torch", "torch-module"]


def _run(module, layer, x: np.ndarray) -> np.ndarray:
    if module is npl:
        return layer(x)
    return layer(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_groups_consecutive_positions(module):
    B, T, C = 2, 8, 3
    x = np.arange(B * T * C, dtype=np.float32).reshape(B, T, C)
    out = _run(module, module.FlattenConsecutive(2), x)
    assert out.shape == (B, T // 2, 2 * C)
    # position pair (2t, 2t+1) becomes one row: their channels side by side
    for b in range(B):
        for t in range(T // 2):
            np.testing.assert_array_equal(out[b, t], np.concatenate([x[b, 2 * t], x[b, 2 * t + 1]]))


@pytest.mark.parametrize("module", MODULES, ids=IDS)
@pytest.mark.parametrize("T", [1, 2, 4, 8, 16, 32])
def test_any_number_of_levels_ends_squeezed(module, T):
    B, C = 3, 2
    x = np.random.default_rng(T).standard_normal((B, T, C)).astype(np.float32)
    levels = int(np.log2(T))
    h = x
    for _ in range(levels):
        h = _run(module, module.FlattenConsecutive(2), h)
    if levels == 0:
        assert h.shape == (B, T, C)
    else:
        # after log2(T) pairings one position is left and its time axis is gone
        assert h.shape == (B, T * C)
        np.testing.assert_array_equal(h, x.reshape(B, T * C))


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_n_equal_to_t_flattens_everything(module):
    x = np.ones((2, 6, 4), dtype=np.float32)
    assert _run(module, module.FlattenConsecutive(6), x).shape == (2, 24)
    assert _run(module, module.FlattenConsecutive(3), x).shape == (2, 2, 12)


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_clear_errors(module):
    with pytest.raises(ConfigError, match="divisible by 2"):
        _run(module, module.FlattenConsecutive(2), np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"\(B, T, C\)"):
        _run(module, module.FlattenConsecutive(2), np.zeros((2, 4), dtype=np.float32))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            module.FlattenConsecutive(bad)


@pytest.mark.parametrize("squeeze", [False, True])
def test_numpy_backward_is_the_inverse_reshape_and_matches_autograd(squeeze):
    rng = np.random.default_rng(0)
    T = 2 if squeeze else 8
    x = rng.standard_normal((3, T, 5))
    layer = npl.FlattenConsecutive(2)
    out = layer(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    xt = torch.from_numpy(x).requires_grad_()
    (tl.FlattenConsecutive(2)(xt) * torch.from_numpy(dout)).sum().backward()
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    assert dx.shape == x.shape
