"""The layer vocabulary in numpy, with every backward pass written by hand.

Each layer has ``forward(x)``, which stores what its backward pass needs and
keeps its result in ``.out``, and ``backward(dout)``, which takes the
gradient of the loss with respect to that result and returns the gradient
with respect to the layer's input, setting ``.grad`` of its parameters on
the way. A backward pass reads as the forward pass upside down: one line per
forward line, in reverse order, each with the shape it produces.

Gradients are *set*, not accumulated: after ``backward`` every ``.grad`` is
the gradient of the last forward pass alone, so there is no zero_grad step
to forget. Layers compute in the dtype of their parameters and inputs:
float32 to train, float64 for finite-difference checks.

Shapes: B batch, T positions in the context, C channels; ``Linear`` acts on
the last axis, so it takes (B, C) as well as (B, T, C).
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from tinylm.layers import base, composite
from tinylm.layers.base import (
    Cache, LanguageModel, Layer, check_cached, dropout_mask, first_state, keep_state,
)
from tinylm import losses
from tinylm.layers.shape_checks import (
    check_batch_norm_examples, check_block, check_flatten_input, check_group,
)

# the composite layers (tinylm.layers.composite) are built from this module's primitives
PRIMITIVES = sys.modules[__name__]


class Parameter:
    """A trainable array, its gradient, and the name it has in a state dict."""

    def __init__(self, data: np.ndarray, name: str = "") -> None:
        self.data = data
        self.grad = np.zeros_like(data)
        self.name = name

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


ONEHOT_LIMIT = 1 << 20  # entries of the one-hot matrix the embedding backward may build


class Embedding(Layer):
    """A lookup table: token id -> a learned vector of ``embedding_dim`` numbers."""

    param_names = ("weight",)

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32) -> None:
        super().__init__()
        self.weight = Parameter(np.zeros((num_embeddings, embedding_dim), dtype=dtype), "weight")

    def forward(self, idx: np.ndarray) -> np.ndarray:
        self.idx = idx                                   # (B, T) integer ids, or (B,)
        self.out = self.weight.data[idx]                 # (B, T, C)
        return self.out

    def backward(self, dout: np.ndarray) -> None:
        W = self.weight.data
        V, C = W.shape
        idx = self.idx.reshape(-1)                                             # (B*T,)
        d = dout.reshape(-1, C)                                                # (B*T, C)
        # A row used k times in the batch receives the sum of its k gradients:
        # onehot(idx).T @ d, one small matmul (ten times faster than np.add.at,
        # which adds repeated indices one at a time); for a large vocabulary
        # the one-hot matrix would cost more than it saves.
        if V * len(idx) <= ONEHOT_LIMIT:
            onehot = np.zeros((V, len(idx)), dtype=W.dtype)                   # (V, B*T)
            onehot[idx, np.arange(len(idx))] = 1
            self.weight.grad = onehot @ d                                      # (V, C)
        else:
            dW = np.zeros_like(W)                                              # (V, C)
            np.add.at(dW, idx, d)
            self.weight.grad = dW
        return None  # token ids are not differentiable


class Flatten(Layer):
    """Concatenate the context's embeddings: (B, T, C) -> (B, T*C)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_shape = x.shape                          # (B, T, C)
        self.out = x.reshape(x.shape[0], -1)             # (B, T*C)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.in_shape)               # (B, T, C)


@functools.lru_cache(maxsize=64)
def filled(n: int, value: float, dtype: np.dtype) -> np.ndarray:
    """A read-only vector of n copies of ``value``: a matrix-vector product with it is each
    row's sum times ``value`` (1: the sums; 1/n: the means), one BLAS call where numpy's
    reduction along a short last axis pays a call per row. Kept, since a sampled token
    would otherwise allocate a dozen of them."""
    v = np.full(n, value, dtype=dtype)
    v.flags.writeable = False
    return v


@functools.lru_cache(maxsize=64)
def future_mask(T: int, Tk: int, dtype: np.dtype) -> np.ndarray:
    """(T, Tk), read-only: -inf where a key lies after its query's own position (the
    queries are the last T of Tk positions), else 0. Kept, since every attention layer of
    every step adds the same one."""
    mask = np.triu(np.full((T, Tk), -np.inf, dtype=dtype), k=Tk - T + 1)
    mask.flags.writeable = False
    return mask


class Linear(Layer):
    """``x @ weight.T + bias`` on the last axis; weight stored (out, in) as in PyTorch.

    ``bias=False`` is for a Linear followed by BatchNorm, whose mean
    subtraction would cancel any bias.
    """

    param_names = ("weight", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32) -> None:
        super().__init__()
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dtype), "weight")
        self.bias = Parameter(np.zeros(out_features, dtype=dtype), "bias") if bias else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x                                       # (..., in)
        W = self.weight.data
        # Every leading axis is one more example: one matmul of (N, in) rows. On a (B, T, in)
        # array numpy calls BLAS once per leading index, up to 2.5x slower with W transposed.
        out = x.reshape(-1, W.shape[1]) @ W.T            # (N, out)
        if self.bias is not None:
            out += self.bias.data                        # (N, out), in place: no second array
        self.out = out.reshape(x.shape[:-1] + (W.shape[0],))  # (..., out)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        W = self.weight.data
        # Every leading axis (batch, and time for (B, T, C)) is one more example.
        x2 = self.x.reshape(-1, W.shape[1])              # (N, in)
        dout2 = dout.reshape(-1, W.shape[0])             # (N, out)
        if self.bias is not None:
            self.bias.grad = dout2.sum(axis=0)           # (out,)
        self.weight.grad = dout2.T @ x2                  # (out, in)
        # per leading index, as numpy does it: with W untransposed, about 10% faster
        # than one matmul of (N, out) rows
        return dout @ W                                  # (..., in)


class Tanh(Layer):
    """Elementwise tanh; its derivative 1 - tanh**2 is computed from the output."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.out = np.tanh(x)                            # (..., H)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dx = np.square(self.out)                         # (..., H)
        np.subtract(1, dx, out=dx)                       # 1 - tanh**2, the local derivative
        dx *= dout                                       # (..., H)
        return dx


class BatchNorm1d(Layer):
    """Batch normalisation: Ioffe and Szegedy, "Batch Normalization: Accelerating
    Deep Network Training by Reducing Internal Covariate Shift", ICML 2015.

    Each channel (last axis) is normalised to zero mean and unit variance over
    the examples of the batch, (B, C), or over batch and time, (B, T, C), then
    scaled by ``weight`` and shifted by ``bias``. In training mode it uses the
    batch statistics and moves ``running_mean`` / ``running_var`` towards them
    by ``momentum``; in eval mode it uses the running statistics and changes
    nothing. As in torch.nn.BatchNorm1d, the batch is normalised with the
    biased variance while ``running_var`` tracks the unbiased one.
    """

    batch_statistics = True  # training mode needs >= 2 examples per channel

    param_names = ("weight", "bias")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(np.ones(dim, dtype=dtype), "weight")
        self.bias = Parameter(np.zeros(dim, dtype=dtype), "bias")
        self.running_mean = np.zeros(dim, dtype=dtype)
        self.running_var = np.ones(dim, dtype=dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x2 = x.reshape(-1, x.shape[-1])                  # (N, C), N = B or B*T
        if self.training:
            n = check_batch_norm_examples(x2.shape[0])
            mean = x2.mean(axis=0)                       # (C,)
            xc = x2 - mean                               # (N, C)
            # biased: what the batch is normalised with; np.var's arithmetic, in its order,
            # on the centred values the normalisation needs anyway
            var = np.square(xc, out=np.empty_like(xc)).mean(axis=0)  # (C,)
            m, dtype = self.momentum, self.running_mean.dtype
            self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(dtype, copy=False)
            self.running_var = ((1 - m) * self.running_var
                                + m * var * (n / (n - 1))).astype(dtype, copy=False)
        else:
            mean, var = self.running_mean, self.running_var
            xc = x2 - mean                               # (N, C)
        self.in_shape = x.shape
        self.inv_std = 1.0 / np.sqrt(var + self.eps)     # (C,)
        self.xhat = xc * self.inv_std                    # (N, C)
        out = np.multiply(self.xhat, self.weight.data, out=xc)  # (N, C), weight * xhat
        out += self.bias.data                            # (N, C)
        self.out = out.reshape(x.shape)                  # (B, C) or (B, T, C)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        d = dout.reshape(-1, dout.shape[-1])             # (N, C)
        self.bias.grad = d.sum(axis=0)                   # (C,)
        self.weight.grad = (d * self.xhat).sum(axis=0)   # (C,)
        dxhat = d * self.weight.data                     # (N, C)
        if not self.training:
            # the running statistics are constants: a per-channel affine map
            return (dxhat * self.inv_std).reshape(self.in_shape)
        # Every x moves the batch mean and variance, which every xhat depends
        # on; summing those paths gives the closed form (see docs/deep.md).
        n = d.shape[0]
        dx = self.inv_std / n * (n * dxhat - dxhat.sum(axis=0)
                                 - self.xhat * (dxhat * self.xhat).sum(axis=0))  # (N, C)
        return dx.reshape(self.in_shape)                 # (B, C) or (B, T, C)


class FlattenConsecutive(Layer):
    """Concatenate each ``n`` consecutive positions: (B, T, C) -> (B, T/n, C*n).

    Stacked with Linear layers this fuses neighbours pairwise, level by
    level, the tree of dilated causal convolutions of WaveNet (van den Oord
    et al., "WaveNet: A Generative Model for Raw Audio", 2016) computed for
    one output position. A time axis of 1 is squeezed away: (B, C*n).
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = check_group(n)

    def forward(self, x: np.ndarray) -> np.ndarray:
        B, T, C = check_flatten_input(x.shape, self.n)
        self.in_shape = x.shape                          # (B, T, C)
        out = x.reshape(B, T // self.n, C * self.n)      # (B, T/n, C*n)
        if out.shape[1] == 1:
            out = out.reshape(B, C * self.n)             # (B, C*n)
        self.out = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.in_shape)               # (B, T, C)


class LayerNorm(Layer):
    """Layer normalisation: Ba, Kiros and Hinton, "Layer Normalization", 2016.

    Each position's vector (last axis) is normalised to zero mean and unit
    variance over its own channels, then scaled by ``weight`` and shifted by
    ``bias``: BatchNorm's arithmetic along the other axis, with no batch
    statistics and so the same in training and in eval mode, as
    torch.nn.LayerNorm (biased variance, eps inside the square root).
    """

    param_names = ("weight", "bias")

    def __init__(self, dim: int, eps: float = 1e-5, dtype=np.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim, dtype=dtype), "weight")
        self.bias = Parameter(np.zeros(dim, dtype=dtype), "bias")

    def forward(self, x: np.ndarray) -> np.ndarray:
        C = x.shape[-1]
        x2 = x.reshape(-1, C)                            # (N, C), N = B*T positions
        # A position's means over its C channels as matrix-vector products (see ``filled``).
        # Few calls matter as much as few passes: a sampled token is one position, where
        # every numpy call costs about a microsecond.
        mean_of = filled(C, 1.0 / C, x.dtype)            # (C,) 1/C
        xc = x2 - (x2 @ mean_of)[:, None]                # (N, C) x - mean
        var = np.square(xc) @ mean_of                    # (N,) biased variance
        var += self.eps
        inv_std = np.sqrt(var, out=var)                  # (N,), in place: var is not needed again
        np.divide(1, inv_std, out=inv_std)               # (N,) 1 / sqrt(var + eps)
        self.inv_std = inv_std[:, None]                  # (N, 1)
        self.xhat = np.multiply(xc, self.inv_std, out=xc)  # (N, C), in place: xc is not needed again
        out = self.xhat * self.weight.data               # (N, C)
        out += self.bias.data                            # (N, C)
        self.out = out.reshape(x.shape)                  # (..., C)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        C = dout.shape[-1]
        d = dout.reshape(-1, C)                          # (N, C)
        w, xhat = self.weight.data, self.xhat            # (C,), (N, C)
        self.bias.grad = d.sum(axis=0)                   # (C,)
        dxhat_xhat = d * xhat                            # (N, C), d * xhat; times w below
        self.weight.grad = dxhat_xhat.sum(axis=0)        # (C,)
        # every x of a position moves its mean and variance: BatchNorm's closed form
        # (docs/deep.md) with the sums over the channels instead of the batch,
        #   dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = d * w,
        # the two means matrix-vector products with the weight, as in the forward pass
        mean_dxhat = d @ w                               # (N,) sum(dxhat)
        mean_dxhat /= C                                  # (N,)
        mean_dxhat_xhat = dxhat_xhat @ w                 # (N,) sum(dxhat * xhat)
        mean_dxhat_xhat /= C                             # (N,)
        dx = d * w                                       # (N, C) dxhat
        dx -= mean_dxhat[:, None]                        # (N, C)
        # into dxhat_xhat's array: the weight's gradient has been summed from it
        dx -= np.multiply(xhat, mean_dxhat_xhat[:, None], out=dxhat_xhat)  # (N, C)
        dx *= self.inv_std                               # (N, C)
        return dx.reshape(dout.shape)                    # (..., C)


GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Layer):
    """The Gaussian error linear unit of Hendrycks and Gimpel, "Gaussian Error Linear
    Units (GELUs)", 2016, in its tanh form:

        gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))

    which is PyTorch's ``gelu(x, approximate="tanh")`` (and GPT-2's); the exact
    x * Phi(x) needs erf, which numpy does not have. It differs from the exact
    form by less than 5e-4.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x                                       # (..., H)
        # One array, updated in place, for the tanh's argument and then the tanh itself,
        # kept for the backward pass. x * x * x, as PyTorch's kernel writes it (and far
        # cheaper than a power).
        t = x * x                                        # (..., H)
        t *= x                                           # x**3
        t *= 0.044715
        t += x
        t *= GELU_C                                      # c (x + 0.044715 x**3)
        self.t = np.tanh(t, out=t)                       # (..., H)
        out = t + 1                                      # (..., H)
        out *= x
        out *= 0.5                                       # 0.5 x (1 + t)
        self.out = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, t = self.x, self.t
        # product rule: d/dx of 0.5 x (1 + t), where dt/dx = (1 - t**2) * c (1 + 3 * 0.044715 x**2);
        # two arrays, updated in place
        g = np.multiply(x, 3 * 0.044715)                 # (..., H)
        g *= x
        g += 1                                           # 1 + 3 * 0.044715 x**2
        dt = t * t                                       # (..., H)
        np.subtract(1, dt, out=dt)
        dt *= GELU_C
        dt *= g                                          # dt/dx
        dt *= x
        dt *= 0.5                                        # 0.5 x dt/dx
        dx = np.add(t, 1, out=g)                         # (..., H), into g's array: g is in dt
        dx *= 0.5
        dx += dt                                         # 0.5 (1 + t) + 0.5 x dt/dx
        dx *= dout                                       # (..., H)
        return dx


class Dropout(composite.Dropout, Layer):
    """Dropout: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
    Overfitting", JMLR 2014.

    In training each element is zeroed with probability p and the others
    scaled by 1 / (1 - p) (inverted dropout, as torch.nn.Dropout), so that
    no unit can rely on any other being there; in eval mode it passes x
    through. The mask comes from the run's RNG (``rng``, given by the model:
    ``draw_dropout_from``), so every backend drops the same elements.
    """

    mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = None
        if self.training and self.p > 0:
            self.mask = dropout_mask(self.rng, x.shape, self.p, x.dtype, self.part)  # (...,) 0, 1/(1-p)
            x = x * self.mask
        self.out = x
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout if self.mask is None else dout * self.mask   # the same elements pass


class CausalSelfAttention(composite.CausalSelfAttention, Layer):
    """Masked multi-head self-attention: Vaswani et al., "Attention Is All You Need", 2017.

    Each position asks a query of every position up to itself (the causal
    mask: a language model may not read the token it is predicting) and
    takes the softmax-weighted sum of their values. One Linear ``qkv`` makes
    queries, keys and values for all heads at once; ``n_head`` heads of
    C / n_head channels each attend independently; ``proj`` mixes the heads'
    outputs. Input and output (B, T, C). With dropout, GPT-2's two places:
    the attention weights (a position's reading of some others is dropped)
    and the output.
    """

    L = PRIMITIVES

    def _heads(self, a: np.ndarray) -> np.ndarray:
        B, T, C = a.shape
        return a.reshape(B, T, self.n_head, C // self.n_head).transpose(0, 2, 1, 3)  # (B, nh, T, hs)

    def forward(self, x: np.ndarray, cache: Cache | None = None) -> np.ndarray:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        # qkv's (B, T, 3C) read as (B, T, 3, nh, hs): each head's queries, keys and values
        # as views, no copy
        q, k, v = self.qkv(x).reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if cache is not None:  # the T new positions attend to the past ones too
            past = cache.slot(self)
            if past:
                k = np.concatenate([past["k"], k], axis=2)    # (B, nh, Tk, hs)
                v = np.concatenate([past["v"], v], axis=2)
            past["k"], past["v"] = k, v
        Tk = k.shape[2]
        self.scale = 1.0 / math.sqrt(hs)
        scores = q @ k.transpose(0, 1, 3, 2)                  # (B, nh, T, Tk)
        scores *= self.scale                                  # in place: one array through the softmax
        if T > 1:
            scores += future_mask(T, Tk, scores.dtype)
        # stable softmax along the keys; the diagonal is finite. The row maxima over a
        # transposed copy: numpy's max along a short last axis pays a call per row, along
        # the leading axis it is one pass (about 4x faster here, copy included).
        scores -= scores.transpose(3, 0, 1, 2).copy().max(axis=0)[..., None]  # (B, nh, T, Tk)
        att = np.exp(scores, out=scores)                      # in place: the scores are not needed again
        att /= (att.reshape(-1, Tk) @ filled(Tk, 1.0, att.dtype)).reshape(B, nh, T, 1)  # rows sum to 1
        self.q, self.k, self.v, self.att = q, k, v, att
        # each head's output written into its place among the channels: proj's (B, T, C)
        # input with no transposed copy
        y = np.empty((B, T, nh, hs), dtype=att.dtype)
        np.matmul(self.attn_dropout(att), v, out=y.transpose(0, 2, 1, 3))  # (B, nh, T, hs)
        self.out = self.resid_dropout(self.proj(y.reshape(B, T, C)))       # (B, T, C)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        B, T, C = dout.shape
        nh, hs = self.n_head, C // self.n_head
        dy = self._heads(self.proj.backward(self.resid_dropout.backward(dout)))  # (B, nh, T, hs)
        # the gradients of q, k and v written into their places in qkv's (B, T, 3C) gradient
        dqkv = np.empty((B, T, 3, nh, hs), dtype=dout.dtype)
        dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)            # 3 x (B, nh, T, hs) views
        datt = self.attn_dropout.backward(dy @ self.v.transpose(0, 1, 3, 2))  # (B, nh, T, T)
        np.matmul(self.attn_dropout.out.transpose(0, 1, 3, 2), dy, out=dv)   # (B, nh, T, hs)
        # softmax: d scores = att * (d att - sum(d att * att)); masked entries have att 0.
        # In place: datt is this pass's own array; the row sums a matrix-vector product.
        dscores = datt                                        # (B, nh, T, T)
        dscores -= ((datt * self.att).reshape(-1, T) @ filled(T, 1.0, datt.dtype)
                    ).reshape(B, nh, T, 1)                    # d att - sum(d att * att)
        dscores *= self.att
        dscores *= self.scale                                 # (B, nh, T, T)
        np.matmul(dscores, self.k, out=dq)                    # (B, nh, T, hs)
        np.matmul(dscores.transpose(0, 1, 3, 2), self.q, out=dk)  # (B, nh, T, hs)
        return self.qkv.backward(dqkv.reshape(B, T, 3 * C))   # (B, T, C)


class Sequential(base.Sequential):
    """Layers applied one after another; backward runs them in reverse."""

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        for layer in reversed(self.layers):
            layer.out_grad = dout  # kept for the diagnostics of gradient flow
            dout = layer.backward(dout)
        return dout


class Block(composite.Block, Layer):
    """The pre-norm Transformer block (see tinylm.layers.composite), with its backward pass."""

    L = PRIMITIVES

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dh = dout + self.ln2.backward(self.mlp.backward(dout))   # (B, T, C)
        return dh + self.ln1.backward(self.attn.backward(dh))    # (B, T, C)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), as 0.5 (1 + tanh(x / 2)): the same function, with no overflow."""
    return 0.5 * (1 + np.tanh(0.5 * x))


class RNN(Layer):
    """A recurrent net of tanh cells (Elman, "Finding Structure in Time", 1990), unrolled
    over the positions of (B, T, C) and trained by backpropagation through time.

    h_t = tanh(xh_to_h([x_t, h_{t-1}])), from a learned ``start`` state h_{-1};
    the output is every h_t, (B, T, n_embd2). The backward pass runs the
    positions in reverse, carrying the gradient of each h into the step
    before; the weight gradients of all positions are one matmul at the end.
    """

    param_names = ("start",)
    child_names = ("xh_to_h",)

    def __init__(self, n_embd: int, n_embd2: int, dtype=np.float32) -> None:
        super().__init__()
        self.start = Parameter(np.zeros((1, n_embd2), dtype=dtype), "start")
        self.xh_to_h = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)

    def forward(self, x: np.ndarray, cache: Cache | None = None) -> np.ndarray:
        B, T, C = x.shape
        W, b = self.xh_to_h.weight.data, self.xh_to_h.bias.data
        H = self.start.data.shape[1]
        h = np.broadcast_to(first_state(self.start.data, cache, self), (B, H))  # (B, H)
        self.xh, hs = [], []
        for t in range(T):
            xh = np.concatenate([x[:, t], h], axis=1)             # (B, C+H)
            h = np.tanh(xh @ W.T + b)                             # (B, H)
            self.xh.append(xh)
            hs.append(h)
        self.out = np.stack(hs, axis=1)                           # (B, T, H)
        keep_state(cache, self, self.out)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        B, T, H = dout.shape
        W = self.xh_to_h.weight.data
        C = W.shape[1] - H
        dx = np.empty((B, T, C), dtype=dout.dtype)
        dpre = np.empty((T, B, H), dtype=dout.dtype)
        dh = np.zeros((B, H), dtype=dout.dtype)                   # from the step after
        for t in reversed(range(T)):
            dh = dh + dout[:, t]                                  # (B, H)
            dpre[t] = dh * (1 - self.out[:, t] ** 2)              # (B, H) through tanh
            dxh = dpre[t] @ W                                     # (B, C+H)
            dx[:, t], dh = dxh[:, :C], dxh[:, C:]
        xh = np.stack(self.xh)                                    # (T, B, C+H)
        self.xh_to_h.weight.grad = dpre.reshape(-1, H).T @ xh.reshape(T * B, -1)  # (H, C+H)
        self.xh_to_h.bias.grad = dpre.sum(axis=(0, 1))            # (H,)
        self.start.grad = dh.sum(axis=0, keepdims=True)           # (1, H): h_{-1} of every row
        return dx                                                 # (B, T, C)


class GRU(Layer):
    """A recurrent net of gated cells: Cho et al., "Learning Phrase Representations using
    RNN Encoder-Decoder for Statistical Machine Translation", 2014.

    At each position a reset gate r decides how much of h_{t-1} the candidate
    hbar may read, and an update gate z how much of h_{t-1} to replace by it:

        r = sigmoid(xh_to_r([x, h]))      hbar = tanh(xh_to_hbar([x, r * h]))
        z = sigmoid(xh_to_z([x, h]))      h_t = (1 - z) * h + z * hbar

    Where z stays near 0 the state, and its gradient, pass through
    unchanged, which a tanh cell cannot do. Unrolled and trained as ``RNN``.
    """

    param_names = ("start",)
    child_names = ("xh_to_z", "xh_to_r", "xh_to_hbar")

    def __init__(self, n_embd: int, n_embd2: int, dtype=np.float32) -> None:
        super().__init__()
        self.start = Parameter(np.zeros((1, n_embd2), dtype=dtype), "start")
        self.xh_to_z = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)
        self.xh_to_r = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)
        self.xh_to_hbar = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)

    def forward(self, x: np.ndarray, cache: Cache | None = None) -> np.ndarray:
        B, T, C = x.shape
        lz, lr, lhb = self.xh_to_z, self.xh_to_r, self.xh_to_hbar
        H = self.start.data.shape[1]
        h = np.broadcast_to(first_state(self.start.data, cache, self), (B, H))  # (B, H)
        self.steps, hs = [], []
        for t in range(T):
            xh = np.concatenate([x[:, t], h], axis=1)                       # (B, C+H)
            r = sigmoid(xh @ lr.weight.data.T + lr.bias.data)               # (B, H)
            xhr = np.concatenate([x[:, t], r * h], axis=1)                  # (B, C+H)
            hbar = np.tanh(xhr @ lhb.weight.data.T + lhb.bias.data)         # (B, H)
            z = sigmoid(xh @ lz.weight.data.T + lz.bias.data)               # (B, H)
            self.steps.append((h, xh, r, xhr, hbar, z))
            h = (1 - z) * h + z * hbar                                      # (B, H)
            hs.append(h)
        self.out = np.stack(hs, axis=1)                                     # (B, T, H)
        keep_state(cache, self, self.out)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        B, T, H = dout.shape
        lz, lr, lhb = self.xh_to_z, self.xh_to_r, self.xh_to_hbar
        C = lz.weight.data.shape[1] - H
        dx = np.empty((B, T, C), dtype=dout.dtype)
        dpre = {name: np.empty((T, B, H), dtype=dout.dtype) for name in ("z", "r", "hbar")}
        dh = np.zeros((B, H), dtype=dout.dtype)                             # from the step after
        for t in reversed(range(T)):
            h, xh, r, xhr, hbar, z = self.steps[t]
            dnext = dh + dout[:, t]                                         # (B, H) d h_t
            dz = dnext * (hbar - h)                                         # h_t = h + z (hbar - h)
            dh = dnext * (1 - z)                                            # (B, H) d h, direct path
            dpre["hbar"][t] = dnext * z * (1 - hbar**2)                     # (B, H) through tanh
            dxhr = dpre["hbar"][t] @ lhb.weight.data                        # (B, C+H)
            drh = dxhr[:, C:]                                               # (B, H) d (r * h)
            dh += drh * r
            dpre["r"][t] = drh * h * r * (1 - r)                            # (B, H) through sigmoid
            dpre["z"][t] = dz * z * (1 - z)                                 # (B, H) through sigmoid
            dxh = dpre["r"][t] @ lr.weight.data + dpre["z"][t] @ lz.weight.data  # (B, C+H)
            dx[:, t] = dxhr[:, :C] + dxh[:, :C]
            dh += dxh[:, C:]
        xh = np.stack([step[1] for step in self.steps]).reshape(T * B, -1)  # (T*B, C+H)
        xhr = np.stack([step[3] for step in self.steps]).reshape(T * B, -1)  # (T*B, C+H)
        for layer, name, inputs in ((lz, "z", xh), (lr, "r", xh), (lhb, "hbar", xhr)):
            d = dpre[name].reshape(T * B, H)
            layer.weight.grad = d.T @ inputs                                # (H, C+H)
            layer.bias.grad = d.sum(axis=0)                                 # (H,)
        self.start.grad = dh.sum(axis=0, keepdims=True)                     # (1, H)
        return dx                                                           # (B, T, C)


def positions(idx: np.ndarray, cache: Cache | None, block_size: int) -> np.ndarray:
    """The positions of idx's tokens: after those a cache has read, within the block."""
    past = 0 if cache is None else cache.length      # the positions already read
    T = check_block(idx.shape, block_size, past)
    return np.arange(past, past + T)                 # (T,)


class Transformer(composite.Transformer, Layer):
    """The GPT-2-style Transformer language model (see tinylm.layers.composite), with its
    backward pass."""

    L = PRIMITIVES

    def backward(self, dlogits: np.ndarray) -> None:
        dx = self.blocks.backward(self.ln_f.backward(self.lm_head.backward(dlogits)))  # (B, T, C)
        dx = self.drop.backward(dx)
        self.wte.backward(dx)
        self.wpe.backward(dx.sum(axis=0))                # (T, C): each position's row, over the batch
        return None  # token ids are not differentiable


class RecurrentLM(composite.RecurrentLM, Layer):
    """The recurrent language model (see tinylm.layers.composite), with its backward pass."""

    L = PRIMITIVES

    def backward(self, dlogits: np.ndarray) -> None:
        dh = self.drop_out.backward(self.lm_head.backward(dlogits))  # (B, T, H)
        self.wte.backward(self.drop_in.backward(self.rnn.backward(dh)))
        return None


class CrossEntropy:
    """Mean negative log-likelihood of the targets under softmax(logits) (tinylm.losses),
    the softmax kept for the backward pass."""

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        self.targets = targets                                            # (B,)
        loss, self.probs = losses.softmax_cross_entropy(logits, targets)  # probs (B, V)
        return loss

    def backward(self) -> np.ndarray:
        # d/dlogits of -log softmax(logits)[y] is softmax(logits) - onehot(y);
        # the mean over the batch divides each row by B.
        B = self.probs.shape[0]
        dlogits = self.probs.copy()                                       # (B, V)
        dlogits[np.arange(B), self.targets] -= 1                          # (B, V)
        dlogits /= B                                                      # (B, V), in place: our copy
        return dlogits


cross_entropy = losses.cross_entropy  # ``CrossEntropy``'s loss, nothing kept for a backward pass


class SequenceCrossEntropy:
    """The mean negative log-likelihood over every position whose target is not IGNORE.

    logits (B, T, V), targets (B, T): the loss of a model that predicts at
    every position, padding excluded, so that it is the mean per predicted
    token, as ``CrossEntropy`` is for one prediction per example.
    """

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        scored_logits, scored_targets, self.valid = losses.scored(logits, targets)  # valid (B*T,)
        self.shape = logits.shape
        self._ce = CrossEntropy()
        return self._ce.forward(scored_logits, scored_targets)

    def backward(self) -> np.ndarray:
        # CrossEntropy's backward written straight into the rows of the scored positions:
        # the probabilities copied once, not into a (N, V) gradient and again into these rows
        probs, targets = self._ce.probs, self._ce.targets                # (N, V), (N,)
        dflat = np.zeros((self.valid.size, self.shape[-1]), dtype=probs.dtype)  # (B*T, V)
        rows = np.flatnonzero(self.valid)                # (N,) padding positions get no gradient
        dflat[rows] = probs                              # (B*T, V)
        dflat[rows, targets] -= 1                        # softmax - onehot(y)
        dflat /= len(rows)                               # the mean over the N scored targets
        return dflat.reshape(self.shape)                 # (B, T, V)


sequence_cross_entropy = losses.sequence_cross_entropy  # ``SequenceCrossEntropy``'s, the same


def to_dtype(layers: Sequence[Layer], dtype) -> None:
    """Cast every parameter and buffer of ``layers`` in place (float64 for gradient checks)."""
    for layer in layers:
        if isinstance(layer, base.Sequential):
            to_dtype(layer.layers, dtype)
            continue
        for name in layer.param_names:
            p = getattr(layer, name)
            if p is not None:
                p.data = p.data.astype(dtype)
                p.grad = p.grad.astype(dtype)
        for name in layer.buffer_names:
            setattr(layer, name, getattr(layer, name).astype(dtype))
        to_dtype([child for _, child in layer.children()], dtype)


class NumpyLM(LanguageModel):
    """A language model over numpy layers, trained with the hand-written backward passes."""

    backend = "numpy"
    criterion = CrossEntropy  # the loss, with the backward pass that starts the model's

    def __init__(self, config: Any, net: Layer, reads: int,
                 penalties: Mapping[str, float] = {}) -> None:
        super().__init__(config, net, reads, penalties)
        for name, p in self._params.items():
            p.name = name
        self._criterion = self.criterion()
        self._has_loss = False

    def forward(self, idx: np.ndarray, targets: np.ndarray | None = None
                ) -> tuple[np.ndarray, float | None]:
        x = self._inputs(np.asarray(idx))                                 # (B, reads)
        logits = self.net(x)                                              # (B, V)
        self._has_loss = targets is not None
        if targets is None:
            return logits, None
        loss = self._criterion.forward(logits, np.asarray(targets))
        for name, c in self.penalties.items():
            loss += c * float(np.mean(self._params[name].data ** 2))
        return logits, loss

    def backward(self) -> None:
        if not self._has_loss:
            raise RuntimeError("backward() needs a forward pass with targets first")
        dlogits = self._criterion.backward()                              # (B, V)
        self.net.backward(dlogits)
        for name, c in self.penalties.items():
            p = self._params[name]
            p.grad = p.grad + (2 * c / p.data.size) * p.data              # d c*mean(W**2) / dW

    def parameters(self) -> list[Parameter]:
        return list(self._params.values())

    def _named_parameters(self) -> dict[str, Parameter]:
        return self._params

    def _named_buffers(self) -> dict[str, tuple[Layer, str]]:
        # a buffer is an attribute, replaced on assignment: keep (layer, attribute)
        out = {}
        for i, layer in enumerate(self.layers):
            for name in layer.buffer_names:
                out[f"layers.{i}.{name}"] = (layer, name)
        return out

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, Parameter):
            return x.data.copy()
        if isinstance(x, tuple):  # a buffer: (layer, attribute)
            layer, name = x
            return np.array(getattr(layer, name))
        return np.asarray(x)

    def grad_of(self, x: Any) -> np.ndarray | None:
        # a layer's output gradient is kept on the layer by Sequential.backward
        return x.grad if isinstance(x, Parameter) else getattr(x, "out_grad", None)

    def _assign(self, tensor: Parameter | tuple[Layer, str], value: np.ndarray) -> None:
        if isinstance(tensor, Parameter):
            tensor.data = value.astype(tensor.data.dtype, copy=True)
            tensor.grad = np.zeros_like(tensor.data)
        else:
            layer, name = tensor
            setattr(layer, name, value.astype(np.asarray(getattr(layer, name)).dtype, copy=True))

    def _set_training(self, mode: bool) -> None:
        self.net.train(mode)


class NumpySequenceLM(NumpyLM):
    """A language model that predicts at every position: one network (``Transformer``,
    ``RecurrentLM``) whose parameters keep their own dotted names.

    ``forward(idx (B, T), targets (B, T) or None) -> (logits (B, T, V), loss)``,
    the loss the mean over the targets that are not ``IGNORE``; T is at most
    ``context``, the block size. Given a ``Cache`` (and no targets), idx holds
    only the tokens after those the cache has read, and the logits are theirs.
    """

    per_position = True
    criterion = SequenceCrossEntropy

    def forward(self, idx: np.ndarray, targets: np.ndarray | None = None,
                cache: Cache | None = None) -> tuple[np.ndarray, float | None]:
        idx = np.asarray(idx)
        check_cached(targets, cache)
        logits = self.net(idx, cache)                                     # (B, T, V)
        if cache is not None:
            cache.length += idx.shape[1]
        self._has_loss = targets is not None
        if targets is None:
            return logits, None
        return logits, self._criterion.forward(logits, np.asarray(targets))

    def backward(self) -> None:
        if not self._has_loss:
            raise RuntimeError("backward() needs a forward pass with targets first")
        self.net.backward(self._criterion.backward())                     # (B, T, V) in


LM = NumpyLM  # the names models.build_model looks for in every backend module
SequenceLM = NumpySequenceLM
