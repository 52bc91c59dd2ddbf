"""A tiny neural-network library on ``Value``: layers, an MLP, its loss and its optimizers.

``MLP(nin, nouts)`` is a stack of ``Linear`` layers of neurons with a
``Tanh`` between each two, so the last layer gives raw scores (logits).
``cross_entropy`` turns the logits and the right class into a loss, and
``AdamW`` (or plain ``SGD``) moves the weights downhill. Every random number
comes from the ``tinylm.rng.RNG`` passed in, so a model built in the same
order from the same seed is the same model.

The language models' scalar-engine backend (``tinylm.layers.micrograd_layers``)
is built from these same layers and trains with these same optimizers.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from tinylm.errors import CheckpointError, ConfigError
from tinylm.micrograd.engine import Number, Value, weighted_sum
from tinylm.rng import RNG


class Module:
    """Anything with parameters."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        """Leaves accumulate gradients (see ``engine``): clear them before each backward."""
        for p in self.parameters():
            p.grad = 0.0


class Linear(Module):
    """``nout`` neurons reading the same ``nin`` inputs: output j is ``weight[j]·x + bias[j]``.

    ``weight`` holds one row of ``nin`` Values per neuron (PyTorch's (out, in)
    layout) and ``bias`` one Value per neuron, or is None with ``bias=False``.
    Each neuron's weighted sum is one node of the graph (``engine.weighted_sum``).

    With an ``rng``, each neuron's weights are drawn in turn as
    ``uniform(-1, 1) / sqrt(nin)``, which keeps the output's spread about the
    same whatever the fan-in, and the biases start at 0. Without one, every
    weight starts at 0, for a caller that sets them itself (the language
    models load theirs by name, see ``tinylm.models``).

    The input is a vector of ``nin`` Values or numbers, or a nested list of
    such vectors (a batch): the layer acts on the last axis.
    """

    def __init__(self, nin: int, nout: int, bias: bool = True, *, rng: RNG | None = None) -> None:
        _check_size("nin", nin)
        _check_size("nout", nout)
        scale = nin**-0.5
        self.weight = [[Value(0.0 if rng is None else rng.uniform(-1, 1) * scale) for _ in range(nin)]
                       for _ in range(nout)]
        self.bias = [Value(0.0) for _ in range(nout)] if bias else None

    def __call__(self, x: Sequence) -> list:
        return _map_last(x, self._neurons)

    def _neurons(self, x: Sequence[Value | Number]) -> list[Value]:
        x = _as_values(x)  # once here, not once per neuron
        # Without a bias each sum starts from a constant 0: the same numbers, one more parent.
        bias = self.bias if self.bias is not None else [Value(0.0) for _ in self.weight]
        return [weighted_sum(w, x, b) for w, b in zip(self.weight, bias)]

    def parameters(self) -> list[Value]:
        return [w for row in self.weight for w in row] + (self.bias or [])

    def __repr__(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        return f"Linear({len(self.weight[0])}, {len(self.weight)}{bias})"


class Tanh(Module):
    """Elementwise tanh, on a vector of Values or a nested list of them."""

    def __call__(self, x: Sequence) -> list:
        return _map_last(x, lambda v: [xi.tanh() for xi in v])

    def __repr__(self) -> str:
        return "Tanh()"


class MLP(Module):
    """A multi-layer perceptron: ``nin`` inputs, then a ``Linear`` per entry of ``nouts``.

    A ``Tanh`` follows every ``Linear`` but the last, whose outputs are
    therefore logits for ``cross_entropy``. The weights are drawn from
    ``rng`` layer by layer, neuron by neuron.
    """

    def __init__(self, nin: int, nouts: Sequence[int], *, rng: RNG) -> None:
        if not nouts:
            raise ValueError("an MLP needs at least one layer")
        sizes = [nin, *nouts]
        self.layers: list[Linear | Tanh] = []
        for i in range(len(nouts)):
            self.layers.append(Linear(sizes[i], sizes[i + 1], rng=rng))
            if i < len(nouts) - 1:
                self.layers.append(Tanh())

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x  # type: ignore[return-value]

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP({', '.join(map(repr, self.layers))})"


def cross_entropy(logits: Sequence[Value], target: int) -> Value:
    """``-log softmax(logits)[target]``, as one node.

    With ``m = max(logits)``, ``log sum exp(l) = m + log sum exp(l - m)``:
    every exponent is at most 0, so nothing overflows, and the sum is at
    least 1, so its log is finite. The derivative with respect to logit i is
    ``softmax(logits)[i] - (i == target)``: the predicted probabilities minus
    the one-hot truth, which is why this loss trains so well.
    """
    if not 0 <= target < len(logits):
        raise ValueError(f"target {target} is not a class of {len(logits)} logits")
    m = max(logit.data for logit in logits)
    exps = [math.exp(logit.data - m) for logit in logits]
    total = math.fsum(exps)  # exactly rounded: the same on every Python version
    # log(total) - (l_t - m), not m + log(total) - l_t: no large terms to cancel.
    loss = math.log(total) - (logits[target].data - m)
    local = tuple(e / total - (i == target) for i, e in enumerate(exps))
    return Value(loss, tuple(logits), "cross_entropy", local)


class Optimizer:
    """What ``SGD`` and ``AdamW`` share: the parameters, ``lr``, the step count, the state.

    ``lr`` may be changed between steps (a schedule does). ``state_dict()``
    is what a resumed run needs besides the weights: the step count and any
    running means, one number per parameter, in the order of ``params``.
    """

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        if not 0 <= lr < math.inf:
            raise ConfigError(f"lr must be a finite number >= 0, got {lr}")
        self.params = list(params)
        self.lr = lr
        self.steps = 0  # updates so far

    def zero_grad(self) -> None:
        """Leaves accumulate gradients (see ``engine``): clear them before each backward."""
        for p in self.params:
            p.grad = 0.0

    def step(self) -> None:
        raise NotImplementedError

    def _buffers(self) -> dict[str, list[float]]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``{"step": steps, <buffer>: [one float per parameter]}``, copied."""
        return {"step": self.steps, **{name: list(b) for name, b in self._buffers().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state_dict()``; CheckpointError if it is another optimizer's."""
        buffers = self._buffers()
        fits = set(state) == {"step", *buffers} and all(
            len(state[name]) == len(b) for name, b in buffers.items())
        if not fits:
            raise CheckpointError("the saved optimizer state does not fit these parameters")
        for name, b in buffers.items():
            b[:] = [float(x) for x in state[name]]
        self.steps = int(state["step"])


class SGD(Optimizer):
    """Plain gradient descent, ``p -= lr * (grad + weight_decay * p)``, as ``torch.optim.SGD``."""

    def __init__(self, params: Iterable[Value], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if not 0 <= weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
        self.weight_decay = weight_decay

    def step(self) -> None:
        """Update every parameter from its ``grad``, which is left as it is."""
        self.steps += 1
        lr, wd = self.lr, self.weight_decay
        for p in self.params:
            g = p.grad
            if wd:  # the gradient of the penalty wd/2 * p**2, added to the loss's
                g += wd * p.data
            p.data -= lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
    Decay Regularization", 2019), step for step the update of ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"betas must be in [0, 1), got {betas}")
        if not (0 <= eps < math.inf and 0 <= weight_decay < math.inf):
            raise ConfigError(f"eps and weight_decay must be finite numbers >= 0, got {eps}, {weight_decay}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = [0.0] * len(self.params)  # running mean of the gradient
        self.v = [0.0] * len(self.params)  # running mean of its square

    def _buffers(self) -> dict[str, list[float]]:
        return {"exp_avg": self.m, "exp_avg_sq": self.v}  # PyTorch's names

    def step(self) -> None:
        """Update every parameter from its ``grad``, which is left as it is."""
        self.steps += 1
        beta1, beta2 = self.betas
        # The running means start at 0; dividing by 1 - beta**t removes that bias.
        step_size = self.lr / (1 - beta1**self.steps)
        correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        decay = 1 - self.lr * self.weight_decay
        m, v = self.m, self.v
        for i, p in enumerate(self.params):
            g = p.grad
            # Decoupled: the weights shrink directly, not through the gradient,
            # so the decay is not rescaled by Adam's per-weight step size.
            p.data *= decay
            m[i] += (g - m[i]) * (1 - beta1)
            v[i] = v[i] * beta2 + (1 - beta2) * g * g
            denom = math.sqrt(v[i]) / correction2_sqrt + self.eps
            p.data -= step_size * m[i] / denom


def _map_last(x: Sequence, fn: Callable[[Sequence], list]) -> list:
    """``fn`` on every vector along the last axis of a nested list (or on ``x``, a vector)."""
    if x and isinstance(x[0], (list, tuple)):
        return [_map_last(row, fn) for row in x]
    return fn(x)


def _as_values(xs: Sequence[Value | Number]) -> list[Value]:
    return [x if isinstance(x, Value) else Value(x) for x in xs]


def _check_size(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
