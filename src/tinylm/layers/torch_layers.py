"""The layer vocabulary on raw PyTorch tensors: autograd does the backward pass.

The same layers as ``numpy_layers``, written with plain tensors that have
``requires_grad=True`` and no ``nn.Module``: the step between writing every
gradient by hand and PyTorch's idiomatic modules (``torch_modules``). Most
forward lines are the numpy ones with ``torch`` for ``np``; LayerNorm, GELU,
attention and the losses call PyTorch's fused functions (``F.layer_norm``,
``F.gelu``, ``F.scaled_dot_product_attention``, ``F.cross_entropy``), which
compute the same arithmetic in one kernel each, forward and backward, where the
numpy lines are a dozen passes. There is no backward to write.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from tinylm import devices
from tinylm.layers import VOCABULARY, composite
from tinylm.layers.base import (
    Cache, LanguageModel, Layer, Sequential, check_cached, dropout_mask, first_state, keep_state,
    walk,
)
from tinylm.data import IGNORE
from tinylm.layers.shape_checks import (
    check_batch_norm_examples, check_block, check_flatten_input, check_group,
)

__all__ = list(VOCABULARY)  # see tinylm.layers

# the composite layers (tinylm.layers.composite) are built from this module's primitives
PRIMITIVES = sys.modules[__name__]

Sequential = Sequential  # base's container: its arithmetic is its layers'


class Embedding(Layer):
    """A lookup table: token id -> a learned vector of ``embedding_dim`` numbers."""

    param_names = ("weight",)

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.float32) -> None:
        super().__init__()
        self.weight = torch.zeros((num_embeddings, embedding_dim), dtype=dtype, requires_grad=True)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.out = self.weight[idx]                      # (B, T, C)
        return self.out


class Flatten(Layer):
    """Concatenate the context's embeddings: (B, T, C) -> (B, T*C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = x.reshape(x.shape[0], -1)             # (B, T*C)
        return self.out


class Linear(Layer):
    """``x @ weight.T + bias`` on the last axis; weight (out, in) as in nn.Linear."""

    param_names = ("weight", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=torch.float32) -> None:
        super().__init__()
        self.weight = torch.zeros((out_features, in_features), dtype=dtype, requires_grad=True)
        self.bias = torch.zeros(out_features, dtype=dtype, requires_grad=True) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused call (the bias added inside the matrix multiply), not two operations
        self.out = F.linear(x, self.weight, self.bias)   # (..., out)
        return self.out


class Tanh(Layer):
    """Elementwise tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = torch.tanh(x)                         # (..., H)
        return self.out


class BatchNorm1d(Layer):
    """Batch normalisation (Ioffe and Szegedy, ICML 2015) on raw tensors.

    The numpy layer's forward with ``torch`` for ``np``: normalise each
    channel over every other axis with the batch statistics in training
    mode (biased variance), the running ones in eval mode; the running
    statistics are updated in place (unbiased variance, as nn.BatchNorm1d)
    outside the graph.
    """

    batch_statistics = True  # training mode needs >= 2 examples per channel

    param_names = ("weight", "bias")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = torch.ones(dim, dtype=dtype, requires_grad=True)
        self.bias = torch.zeros(dim, dtype=dtype, requires_grad=True)
        self.running_mean = torch.zeros(dim, dtype=dtype)
        self.running_var = torch.ones(dim, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(x.ndim - 1))                  # every axis but the channels
        if self.training:
            n = check_batch_norm_examples(x.numel() // x.shape[-1])
            mean = x.mean(dims)                          # (C,)
            var = x.var(dims, correction=0)              # (C,) biased
            m = self.momentum
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * (n / (n - 1)))
        else:
            mean, var = self.running_mean, self.running_var
        xhat = (x - mean) / torch.sqrt(var + self.eps)   # (B, C) or (B, T, C)
        self.out = self.weight * xhat + self.bias
        return self.out


class FlattenConsecutive(Layer):
    """(B, T, C) -> (B, T/n, C*n), squeezing a time axis of 1; see numpy_layers."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = check_group(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = flatten_consecutive(x, self.n)
        return self.out


class LayerNorm(Layer):
    """Layer normalisation (Ba, Kiros and Hinton, 2016) on raw tensors; see numpy_layers."""

    param_names = ("weight", "bias")

    def __init__(self, dim: int, eps: float = 1e-5, dtype=torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.ones(dim, dtype=dtype, requires_grad=True)
        self.bias = torch.zeros(dim, dtype=dtype, requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's fused kernel: numpy's ten passes in one, and its backward in one more
        self.out = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return self.out


class GELU(Layer):
    """GELU in its tanh form, PyTorch's fused gelu(x, approximate="tanh"); see numpy_layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = F.gelu(x, approximate="tanh")         # (..., H)
        return self.out


class Dropout(composite.Dropout, Layer):
    """Dropout (Srivastava et al., 2014) with its mask from the run's RNG; see numpy_layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = dropout(self, x)
        return self.out


def dropout(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """Dropout's forward for ``layer`` (its ``p``, ``rng``, ``part``), shared with the
    nn.Module version: x times the tinylm RNG's mask."""
    if not layer.training or layer.p == 0:
        return x
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    mask = dropout_mask(layer.rng, tuple(x.shape), layer.p, dtype, layer.part)
    return x * torch.from_numpy(mask).to(x.device)


class CausalSelfAttention(composite.CausalSelfAttention, Layer):
    """Masked multi-head self-attention (Vaswani et al., 2017) on raw tensors; see ``attend``."""

    L = PRIMITIVES

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        self.out = attend(self, x, cache)
        return self.out


def attend(attn: Any, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    """The attention arithmetic of both torch backends, for the layer ``attn`` (its
    ``qkv``, ``proj``, ``n_head`` and dropouts): (B, T, C) -> (B, T, C).

    ``F.scaled_dot_product_attention`` computes softmax(q k^T / sqrt(hs)) v in one
    fused call; where dropout acts on the attention weights in training it is written
    out, since SDPA would draw the mask from torch's generator, not the run's RNG.
    """
    B, T, C = x.shape
    # qkv's (B, T, 3C) read as (B, T, 3, nh, hs): each head's queries, keys and values
    # as views, three operations where splitting and reshaping each one takes seven
    q, k, v = attn.qkv(x).view(B, T, 3, attn.n_head, C // attn.n_head
                               ).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
    k, v = cached_keys(cache, attn, k, v)                  # 2 x (B, nh, Tk, hs)
    Tk = k.shape[2]
    if attn.training and attn.attn_dropout.p > 0:
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // attn.n_head))
        if T > 1:
            scores = scores.masked_fill(future_mask(T, Tk, x.device), float("-inf"))
        y = attn.attn_dropout(torch.softmax(scores, dim=-1)) @ v  # (B, nh, T, hs)
    elif Tk == T:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    elif T == 1:  # one new position reads every key: no mask at all
        y = F.scaled_dot_product_attention(q, k, v)
    else:  # is_causal aligns the mask top-left; with past keys it must be bottom-right
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=~future_mask(T, Tk, x.device))
    return attn.resid_dropout(attn.proj(y.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class Block(composite.Block, Layer):
    """The pre-norm Transformer block on raw tensors; see tinylm.layers.composite."""

    L = PRIMITIVES


class RNN(Layer):
    """The tanh recurrent net unrolled over time on raw tensors; see numpy_layers.
    Autograd does the backpropagation through time."""

    param_names = ("start",)
    child_names = ("xh_to_h",)

    def __init__(self, n_embd: int, n_embd2: int, dtype=torch.float32) -> None:
        super().__init__()
        self.start = torch.zeros((1, n_embd2), dtype=dtype, requires_grad=True)
        self.xh_to_h = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        self.out = rnn_forward(x, first_state(self.start, cache, self), self.xh_to_h)
        keep_state(cache, self, self.out)
        return self.out


class GRU(Layer):
    """The gated recurrent net unrolled over time on raw tensors; see numpy_layers."""

    param_names = ("start",)
    child_names = ("xh_to_z", "xh_to_r", "xh_to_hbar")

    def __init__(self, n_embd: int, n_embd2: int, dtype=torch.float32) -> None:
        super().__init__()
        self.start = torch.zeros((1, n_embd2), dtype=dtype, requires_grad=True)
        self.xh_to_z = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)
        self.xh_to_r = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)
        self.xh_to_hbar = Linear(n_embd + n_embd2, n_embd2, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        self.out = gru_forward(x, first_state(self.start, cache, self),
                               self.xh_to_z, self.xh_to_r, self.xh_to_hbar)
        keep_state(cache, self, self.out)
        return self.out


class Transformer(composite.Transformer, Layer):
    """The decoder-only Transformer language model on raw tensors; see tinylm.layers.composite."""

    L = PRIMITIVES


class RecurrentLM(composite.RecurrentLM, Layer):
    """The recurrent language model on raw tensors; see tinylm.layers.composite."""

    L = PRIMITIVES


def positions(idx: torch.Tensor, cache: Cache | None, block_size: int) -> torch.Tensor:
    """The positions of idx's tokens: after those a cache has read, within the block."""
    past = 0 if cache is None else cache.length
    T = check_block(idx.shape, block_size, past)
    return torch.arange(past, past + T, device=idx.device)


def cached_keys(cache: Cache | None, layer: Any, k: torch.Tensor, v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The new positions' keys and values after those a cache holds, which it then keeps."""
    if cache is None:
        return k, v
    past = cache.slot(layer)
    if past:
        k = torch.cat([past["k"], k], dim=2)                      # (B, nh, Tk, hs)
        v = torch.cat([past["v"], v], dim=2)
    past["k"], past["v"] = k, v
    return k, v


def future_mask(T: int, Tk: int, device: Any) -> torch.Tensor:
    """True where a key lies after its query: the T queries are the last T of Tk positions."""
    return torch.ones(T, Tk, dtype=torch.bool, device=device).triu(Tk - T + 1)


def rnn_forward(x: torch.Tensor, start: torch.Tensor, xh_to_h: Callable) -> torch.Tensor:
    """RNN's forward, shared with the nn.Module version: every h_t, (B, T, H), from the
    state h_{-1} ``start``, (1, H) or (B, H)."""
    B, T, _ = x.shape
    h = start.expand(B, -1)                                       # (B, H)
    hs = []
    for t in range(T):
        h = torch.tanh(xh_to_h(torch.cat([x[:, t], h], dim=1)))   # (B, H)
        hs.append(h)
    return torch.stack(hs, dim=1)                                 # (B, T, H)


def gru_forward(x: torch.Tensor, start: torch.Tensor, xh_to_z: Callable, xh_to_r: Callable,
                xh_to_hbar: Callable) -> torch.Tensor:
    """GRU's forward, shared with the nn.Module version: every h_t, (B, T, H)."""
    B, T, _ = x.shape
    h = start.expand(B, -1)                                       # (B, H)
    hs = []
    for t in range(T):
        xh = torch.cat([x[:, t], h], dim=1)                       # (B, C+H)
        r = torch.sigmoid(xh_to_r(xh))                            # (B, H)
        hbar = torch.tanh(xh_to_hbar(torch.cat([x[:, t], r * h], dim=1)))  # (B, H)
        z = torch.sigmoid(xh_to_z(xh))                            # (B, H)
        h = (1 - z) * h + z * hbar                                # (B, H)
        hs.append(h)
    return torch.stack(hs, dim=1)                                 # (B, T, H)


def flatten_consecutive(x: torch.Tensor, n: int) -> torch.Tensor:
    """FlattenConsecutive's forward, shared with the nn.Module version."""
    B, T, C = check_flatten_input(x.shape, n)
    out = x.reshape(B, T // n, C * n)                    # (B, T/n, C*n)
    if out.shape[1] == 1:
        out = out.reshape(B, C * n)                      # (B, C*n)
    return out


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under softmax(logits), (B, V) and (B,):
    PyTorch's fused log-softmax and NLL (stable: the row maximum is taken out first)."""
    return F.cross_entropy(logits, targets)


def sequence_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every position whose target is not IGNORE,
    (B, T, V) and (B, T): the padding is left out by ``ignore_index``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE)


def as_long(x: Any) -> torch.Tensor:
    """Token ids as an int64 tensor, from a tensor or anything numpy takes."""
    if isinstance(x, torch.Tensor):
        return x.long()
    return torch.from_numpy(np.asarray(x, dtype=np.int64))


class TorchLM(LanguageModel):
    """A language model over raw-tensor layers; ``backward()`` runs autograd.

    ``forward`` returns (logits, loss) as tensors; ``state_dict()`` returns
    numpy float32 arrays like every backend, so checkpoints do not depend on it.
    """

    backend = "torch"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = staticmethod(cross_entropy)

    def __init__(self, config: Any, net: Any, reads: int,
                 penalties: Mapping[str, float] = {}) -> None:
        super().__init__(config, net, reads, penalties)
        self._loss: torch.Tensor | None = None
        self._compiled: Callable[..., torch.Tensor] | None = None

    def compile(self) -> None:
        """Run the network's forward pass (and so its backward) through ``torch.compile``
        from here on; see tinylm.devices. The parameters stay the network's own, so the
        state dict and the optimizer see the same tensors. A forward pass through a cache
        (sampling: one new token, a growing key count) stays uncompiled."""
        # the bound forward: torch.compile takes functions and nn.Modules, and the raw
        # network is neither
        self._compiled = torch.compile(self.net.forward)

    def _net(self, cache: Cache | None = None) -> Callable[..., torch.Tensor]:
        return self.net if self._compiled is None or cache is not None else self._compiled

    dtype = "float32"  # the forward pass's precision: lower ones run under torch.autocast

    def forward(self, idx: Any, targets: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self._inputs(self._ids(idx))                                 # (B, reads)
        with devices.autocast(self.device, self.dtype):
            logits = self._full(self._net()(x))                          # (B, V)
        loss = None
        if targets is not None:
            loss = self.loss_fn(logits, self._ids(targets))
            for name, c in self.penalties.items():
                loss = loss + c * (self._params[name] ** 2).mean()
        self._loss = loss
        return logits, loss

    def backward(self, scale: Any = 1.0, accumulate: bool = False) -> None:
        """Fresh gradients of the last loss in every ``.grad``; with ``accumulate``, added to
        those there. ``scale`` multiplies the loss first (a micro-batch's share of the batch,
        float16's loss scale)."""
        if self._loss is None:
            raise RuntimeError("backward() needs a forward pass with targets first")
        if not accumulate:
            for p in self._params.values():
                p.grad = None
        # a scale of 1 multiplies nothing, so the plain step keeps its numbers to the bit
        (self._loss if isinstance(scale, float) and scale == 1.0 else self._loss * scale).backward()

    def to_device(self, device: str) -> None:
        """Move every parameter and buffer to ``device`` (before an optimizer is made)."""
        self._move_net(device)
        self._params = dict(zip(self._params, self.net.parameters()))  # the moved tensors
        self.device = device

    def _move_net(self, device: str) -> None:
        # raw tensors cannot move in place: each layer gets a moved copy of each of its own
        for layer in walk(self.net):
            for name in layer.param_names + layer.buffer_names:
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.detach().to(device).requires_grad_(t.requires_grad))

    def _ids(self, x: Any) -> torch.Tensor:
        return as_long(x).to(self.device)

    def _full(self, logits: torch.Tensor) -> torch.Tensor:
        # autocast leaves the last matmul's logits in the low precision: the softmax and
        # the loss are computed in float32
        return logits if self.dtype == "float32" else logits.float()

    def parameters(self) -> list[torch.Tensor]:
        return list(self._params.values())

    def _named_parameters(self) -> dict[str, torch.Tensor]:
        return self._params

    def _named_buffers(self) -> dict[str, torch.Tensor]:
        return {self._prefix + n: b for n, b in self.net.named_buffers()}

    def to_numpy(self, x: Any) -> np.ndarray:
        if not isinstance(x, torch.Tensor):
            return np.asarray(x)
        return x.detach().cpu().numpy().copy()

    def grad_of(self, x: Any) -> np.ndarray | None:
        # a layer's output holds its gradient where it was asked to (``keep_output_grad``)
        t = x if isinstance(x, torch.Tensor) else x.out
        return None if t is None or t.grad is None else self.to_numpy(t.grad)

    def inference_mode(self) -> torch.inference_mode:
        # rather than no_grad: it also skips autograd's version counters, a fixed cost per
        # operation that dominates when a sampled token is a few hundred operations on tiny
        # tensors (about a fifth of the time); nothing computed inside is differentiated
        return torch.inference_mode()

    def keep_output_grad(self, layer: Any) -> None:
        if layer.out.requires_grad:
            layer.out.retain_grad()

    def _assign(self, tensor: torch.Tensor, value: np.ndarray) -> None:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(tensor.dtype))

    def _set_training(self, mode: bool) -> None:
        self.net.train(mode)


class TorchSequenceLM(TorchLM):
    """A raw-tensor language model that predicts at every position; see
    numpy_layers.NumpySequenceLM. Parameters keep the network's dotted names."""

    per_position = True
    sequence_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = \
        staticmethod(sequence_cross_entropy)

    def forward(self, idx: Any, targets: Any = None, cache: Cache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_cached(targets, cache)
        idx = self._ids(idx)
        with devices.autocast(self.device, self.dtype):
            logits = self._full(self._net(cache)(idx, cache))            # (B, T, V)
        if cache is not None:
            cache.length += idx.shape[1]
        self._loss = None if targets is None else self.sequence_loss_fn(logits, self._ids(targets))
        return logits, self._loss


LM = TorchLM  # the names models.build_model looks for in every backend module
SequenceLM = TorchSequenceLM
