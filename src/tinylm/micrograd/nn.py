"""A tiny neural-network library on ``Value``: an MLP, its loss and its optimizer.

``MLP(nin, nouts)`` is a stack of ``Layer``s of ``Neuron``s, tanh everywhere
but the last layer, which gives raw scores (logits). ``cross_entropy`` turns
the logits and the right class into a loss, and ``AdamW`` (or plain ``SGD``)
moves the weights downhill. Every random number comes from the
``tinylm.rng.RNG`` passed in, so a model built in the same order from the
same seed is the same model.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

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


def _as_values(xs: Sequence[Value | Number]) -> list[Value]:
    return [x if isinstance(x, Value) else Value(x) for x in xs]


def _check_size(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
