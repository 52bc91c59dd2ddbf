"""A tiny neural-network library on ``Value``: an MLP, its loss and its optimizer.

``MLP(nin, nouts)`` is a stack of ``Layer``s of ``Neuron``s, tanh everywhere
but the last layer, which gives raw scores (logits). ``cross_entropy`` turns
the logits and the right class into a loss, and ``AdamW`` moves the weights
downhill. Every random number comes from the ``tinylm.rng.RNG`` passed in,
so a model built in the same order from the same seed is the same model.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

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


class Neuron(Module):
    """``tanh(w·x + b)``, or ``w·x + b`` when ``nonlin`` is false.

    Weights are drawn in order as ``uniform(-1, 1) / sqrt(nin)``, which keeps
    the pre-activation's spread about the same whatever the fan-in, and the
    bias starts at 0.
    """

    def __init__(self, nin: int, nonlin: bool = True, *, rng: RNG) -> None:
        _check_size("nin", nin)
        self.w = [Value(rng.uniform(-1, 1) * nin**-0.5) for _ in range(nin)]
        self.b = Value(0.0)
        self.nonlin = nonlin

    def __call__(self, x: Sequence[Value | Number]) -> Value:
        return self.activate(_as_values(x))

    def activate(self, x: Sequence[Value]) -> Value:
        """The neuron's output for inputs that are already ``Value``s."""
        act = weighted_sum(self.w, x, self.b)
        return act.tanh() if self.nonlin else act

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"{'Tanh' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    """``nout`` neurons reading the same inputs; always returns a list."""

    def __init__(self, nin: int, nout: int, nonlin: bool = True, *, rng: RNG) -> None:
        _check_size("nout", nout)
        self.neurons = [Neuron(nin, nonlin, rng=rng) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        x = _as_values(x)  # once here, not once per neuron
        return [n.activate(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer([{', '.join(map(repr, self.neurons))}])"


class MLP(Module):
    """A multi-layer perceptron: ``nin`` inputs, then one layer per entry of ``nouts``.

    The last layer is linear, so its outputs are logits for ``cross_entropy``.
    """

    def __init__(self, nin: int, nouts: Sequence[int], *, rng: RNG) -> None:
        if not nouts:
            raise ValueError("an MLP needs at least one layer")
        sizes = [nin, *nouts]
        self.layers = [
            Layer(sizes[i], sizes[i + 1], nonlin=i < len(nouts) - 1, rng=rng)
            for i in range(len(nouts))
        ]

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x  # type: ignore[return-value]

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(map(repr, self.layers))}]"


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


class AdamW:
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
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [0.0] * len(self.params)  # running mean of the gradient
        self.v = [0.0] * len(self.params)  # running mean of its square
        self.t = 0

    def step(self) -> None:
        """Update every parameter from its ``grad``, which is left as it is."""
        self.t += 1
        beta1, beta2 = self.betas
        # The running means start at 0; dividing by 1 - beta**t removes that bias.
        step_size = self.lr / (1 - beta1**self.t)
        correction2_sqrt = (1 - beta2**self.t) ** 0.5
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


def _as_values(xs: Sequence[Value | Number]) -> list[Value]:
    return [x if isinstance(x, Value) else Value(x) for x in xs]


def _check_size(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
