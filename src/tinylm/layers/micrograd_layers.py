"""The layer vocabulary on the scalar engine: every number is a ``Value``.

A tensor here is a nested Python list of ``tinylm.micrograd.Value``
(a (B, T, C) activation is a list of B lists of T lists of C Values), and
every neuron's weighted sum is one node of the graph, so backpropagation
through the language model can be followed number by number. That is what
this backend is for: showing and testing on tiny sizes (a few hundred
parameters, a few examples), not training on a real dataset, which would
build millions of nodes per step. Values compute in Python floats (float64)
starting from the same float32 initial weights as every other backend.

``Linear``, ``Tanh`` and the loss are ``tinylm.micrograd.nn``'s, the ones the
``tinylm micrograd`` demo's MLP is made of, here under the state-dict names
every backend shares; ``Embedding`` and ``Flatten`` read token ids and exist
only here. The trainer updates the weights with ``tinylm.micrograd.nn``'s
optimizers too (see ``tinylm.optim.make_optimizer``).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tinylm.layers import FIXED_WINDOW_VOCABULARY
from tinylm.layers.base import LanguageModel, Layer, Sequential
from tinylm.micrograd import nn
from tinylm.micrograd.engine import Value

__all__ = list(FIXED_WINDOW_VOCABULARY)  # see tinylm.layers


def leaves(nested: Any) -> Iterator[Any]:
    """The elements of a nested list in row-major order (numpy's ``ravel`` order)."""
    if isinstance(nested, list):
        for item in nested:
            yield from leaves(item)
    else:
        yield nested


def _zeros(*shape: int) -> list:
    """A nested list of fresh Values, each its own leaf of the graph."""
    if len(shape) == 1:
        return [Value(0.0) for _ in range(shape[0])]
    return [_zeros(*shape[1:]) for _ in range(shape[0])]


class Embedding(Layer):
    """A lookup table: token id -> a learned vector of ``embedding_dim`` Values."""

    param_names = ("weight",)

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = _zeros(num_embeddings, embedding_dim)

    def _lookup(self, ids: Any) -> list:
        # The same row Values appear wherever a token repeats; backward adds their grads.
        return self.weight[ids] if isinstance(ids, int) else [self._lookup(i) for i in ids]

    def forward(self, idx: Any) -> list:
        self.out = self._lookup(np.asarray(idx).tolist())                # (B, T, C)
        return self.out


class Flatten(Layer):
    """Concatenate the context's embeddings: (B, T, C) -> (B, T*C)."""

    def forward(self, x: list) -> list:
        self.out = [list(leaves(row)) for row in x]                      # (B, T*C)
        return self.out


class Linear(Layer):
    """``tinylm.micrograd.nn.Linear`` on the last axis, as ``weight`` (out, in) and ``bias`` (out).

    Its weights start at 0: tinylm.models draws them and loads them by name.
    """

    param_names = ("weight", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias)
        # The same lists, not copies: loading a state dict sets the Values the layer computes with.
        self.weight, self.bias = self.linear.weight, self.linear.bias

    def forward(self, x: list) -> list:
        self.out = self.linear(x)                                        # (..., out)
        return self.out


class Tanh(Layer):
    """``tinylm.micrograd.nn.Tanh``: elementwise tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.tanh = nn.Tanh()

    def forward(self, x: list) -> list:
        self.out = self.tanh(x)                                          # (..., H)
        return self.out


def cross_entropy(logits: list, targets: Sequence[int]) -> Value:
    """Mean over the batch of ``tinylm.micrograd.nn.cross_entropy``, one fused node per row."""
    return sum(nn.cross_entropy(row, int(t)) for row, t in zip(logits, targets)) / len(logits)


class MicrogradLM(LanguageModel):
    """A language model on the scalar engine.

    ``forward`` returns the logits as a float64 numpy array and the loss as
    a float, like the numpy backend; the graph's own Values stay in
    ``self.logits`` and ``self.loss``. ``parameters()`` is the flat list of
    Value leaves in state-dict order, each array row-major; ``state_dict()``
    holds float64 arrays, so saving loses nothing.
    """

    backend = "micrograd"

    def __init__(self, config: Any, net: Sequential, reads: int,
                 penalties: Mapping[str, float] = {}) -> None:
        super().__init__(config, net, reads, penalties)
        self.logits: list | None = None
        self.loss: Value | None = None

    def forward(self, idx: Any, targets: Any = None) -> tuple[np.ndarray, float | None]:
        x = self._inputs(np.asarray(idx))                                # (B, reads)
        self.logits = self.net(x)                                        # (B, V)
        self.loss = None
        if targets is not None:
            loss = cross_entropy(self.logits, np.asarray(targets).tolist())
            for name, c in self.penalties.items():
                weights = list(leaves(self._params[name]))
                loss = loss + c * (sum(w**2 for w in weights) / len(weights))
            self.loss = loss
        logits = np.array([[v.data for v in row] for row in self.logits])
        return logits, (None if self.loss is None else self.loss.data)

    def backward(self) -> None:
        """Fresh gradients of the last loss in every parameter's ``.grad``."""
        if self.loss is None:
            raise RuntimeError("backward() needs a forward pass with targets first")
        for v in self.parameters():
            v.grad = 0.0
        self.loss.backward()

    def parameters(self) -> list[Value]:
        return [v for p in self._params.values() for v in leaves(p)]

    def _named_parameters(self) -> dict[str, list]:
        return self._params

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):  # logits: forward gave them as numbers already
            return x
        return np.array(_nested(x, "data"), dtype=np.float64)

    def grad_of(self, x: Any) -> np.ndarray | None:
        # a layer's output is nested Values, each holding its own gradient
        return np.array(_nested(x if isinstance(x, list) else x.out, "grad"), dtype=np.float64)

    def _assign(self, tensor: list, value: np.ndarray) -> None:
        for v, x in zip(leaves(tensor), value.reshape(-1).tolist()):
            v.data = float(x)

    def _set_training(self, mode: bool) -> None:
        self.net.train(mode)


def _nested(x: Any, attr: str) -> Any:
    """``attr`` (data or grad) of every Value in nested lists; numbers pass as they are."""
    if isinstance(x, list):
        return [_nested(v, attr) for v in x]
    return getattr(x, attr, x)


LM = MicrogradLM  # the name models.build_model looks for in every backend module
