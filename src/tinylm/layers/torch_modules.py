"""The layer vocabulary as idiomatic PyTorch: ``torch.nn`` modules.

Here the layers are PyTorch's own (``nn.Embedding``, ``nn.Flatten``,
``nn.Linear``, ``nn.Tanh``, ``nn.Sequential``) and the loss is
``F.cross_entropy``; this is how the model would be written in everyday
PyTorch code. They share the constructor signatures of the numpy and
raw-tensor layers, so one builder in ``tinylm.models`` makes all three.
The language model holds an ``nn.Sequential`` as ``net``.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tinylm.layers import VOCABULARY, composite
from tinylm.layers.base import Cache, first_state, keep_state
from tinylm.layers.shape_checks import check_batch_norm_examples, check_group
from tinylm.layers.torch_layers import (
    TorchLM, TorchSequenceLM, attend, dropout, flatten_consecutive, gru_forward, positions,
    rnn_forward, sequence_cross_entropy,  # positions: the Transformer's, as the raw tensors'
)

__all__ = list(VOCABULARY)  # see tinylm.layers

# the composite layers (tinylm.layers.composite) are built from this module's primitives
PRIMITIVES = sys.modules[__name__]

Embedding = nn.Embedding
Flatten = nn.Flatten   # start_dim=1: (B, T, C) -> (B, T*C)
Linear = nn.Linear
Tanh = nn.Tanh
cross_entropy = F.cross_entropy


class Sequential(nn.Sequential):
    """``nn.Sequential`` built from a list of layers, as every backend's ``Sequential`` is."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(*layers)


class BatchNorm1d(nn.Module):
    """Batch normalisation (Ioffe and Szegedy, ICML 2015) over every axis but the last.

    ``nn.BatchNorm1d`` wants channels on axis 1, (B, C, T); ours sit last,
    (B, T, C), as Linear produces them. Folding batch and time into one axis
    lets ``F.batch_norm`` do the work, with PyTorch's own running-statistics
    update, and keeps the state dict to weight, bias, running_mean and
    running_var, the names every backend shares.
    """

    batch_statistics = True  # training mode needs >= 2 examples per channel

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            check_batch_norm_examples(x.numel() // x.shape[-1])
        flat = x.reshape(-1, x.shape[-1])                # (B*T, C)
        out = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                           self.training, self.momentum, self.eps)
        return out.reshape(x.shape)                      # (B, C) or (B, T, C)


class FlattenConsecutive(nn.Module):
    """(B, T, C) -> (B, T/n, C*n), squeezing a time axis of 1; see numpy_layers."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = check_group(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flatten_consecutive(x, self.n)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis, built as the other backends' ``LayerNorm(dim)``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps=eps)


class GELU(nn.GELU):
    """``nn.GELU`` in its tanh form, the formula every tinylm backend computes."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


class Dropout(composite.Dropout, nn.Module):
    """Dropout (Srivastava et al., 2014) as an nn.Module, its mask from the run's tinylm RNG
    rather than torch's generator (``nn.Dropout``), so that it drops what the numpy and
    raw-tensor backends drop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(self, x)


class CausalSelfAttention(composite.CausalSelfAttention, nn.Module):
    """Masked multi-head self-attention (Vaswani et al., 2017) as everyday PyTorch writes it:
    two ``nn.Linear`` and ``F.scaled_dot_product_attention`` with its causal mask (written
    out where dropout acts on the attention weights, whose mask SDPA would draw itself)."""

    L = PRIMITIVES

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return attend(self, x, cache)


class Block(composite.Block, nn.Module):
    """The pre-norm Transformer block as nn.Modules; see tinylm.layers.composite."""

    L = PRIMITIVES


class RNN(nn.Module):
    """The tanh recurrent net unrolled over time, as nn.Modules; see numpy_layers."""

    def __init__(self, n_embd: int, n_embd2: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, n_embd2))
        self.xh_to_h = nn.Linear(n_embd + n_embd2, n_embd2)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        hs = rnn_forward(x, first_state(self.start, cache, self), self.xh_to_h)
        keep_state(cache, self, hs)
        return hs


class GRU(nn.Module):
    """The gated recurrent net unrolled over time, as nn.Modules; see numpy_layers.
    (``nn.GRU`` applies its reset gate after the hidden matmul, a different cell.)"""

    def __init__(self, n_embd: int, n_embd2: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, n_embd2))
        self.xh_to_z = nn.Linear(n_embd + n_embd2, n_embd2)
        self.xh_to_r = nn.Linear(n_embd + n_embd2, n_embd2)
        self.xh_to_hbar = nn.Linear(n_embd + n_embd2, n_embd2)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        hs = gru_forward(x, first_state(self.start, cache, self),
                         self.xh_to_z, self.xh_to_r, self.xh_to_hbar)
        keep_state(cache, self, hs)
        return hs


class Transformer(composite.Transformer, nn.Module):
    """The decoder-only Transformer language model as nn.Modules; see tinylm.layers.composite.
    Its ``state_dict`` has the names of the numpy and raw-tensor versions."""

    L = PRIMITIVES


class RecurrentLM(composite.RecurrentLM, nn.Module):
    """The recurrent language model as nn.Modules; see tinylm.layers.composite."""

    L = PRIMITIVES


class _Modules:
    """For the models over nn.Modules: their layers are the network's ``modules()``."""

    net: nn.Module

    def _sublayers(self) -> Iterator[nn.Module]:
        return self.net.modules()

    def _move_net(self, device: str) -> None:
        self.net.to(device)


class TorchModuleLM(_Modules, TorchLM):
    """The raw-tensor language model's interface over an ``nn.Sequential`` of modules.

    The modules' own random initialisation is overwritten by the builder's
    weights; forward hooks, ``net.to(...)`` and everything else of
    ``nn.Module`` work on ``net`` as usual. A forward hook keeps each
    module's last output in ``.out``, as the other backends' layers do.
    """

    backend = "torch-module"

    def __init__(self, config: Any, net: nn.Sequential, reads: int,
                 penalties: Mapping[str, float] = {}) -> None:
        super().__init__(config, net, reads, penalties)
        for module in net:
            module.out = None
            module.register_forward_hook(_keep_output)


def _keep_output(module: nn.Module, inputs: Any, output: Any) -> None:
    module.out = output


class TorchModuleSequenceLM(_Modules, TorchSequenceLM):
    """The per-position language model over an nn.Module network (``Transformer``,
    ``RecurrentLM``)."""

    backend = "torch-module"


LM = TorchModuleLM  # the names models.build_model looks for in every backend module
SequenceLM = TorchModuleSequenceLM
