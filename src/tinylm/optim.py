"""Optimizers and learning-rate schedules.

``SGD`` and ``AdamW`` update numpy ``Parameter``s (tinylm.layers.numpy_layers).
The scalar engine's ``Value``s have their own, in pure Python
(tinylm.micrograd.nn), wrapped by ``ValueOptimizer``, and the PyTorch
backends compute ``torch.optim``'s update in ``TorchOptimizer``, so that a
trainer sees one interface for every backend: ``step()``, ``zero_grad()``, a
settable ``lr``, and ``state_dict()``/``load_state_dict()`` of numpy arrays.
``make_optimizer`` picks the right one for a model.

``AdamW`` is Loshchilov and Hutter's "Decoupled Weight Decay
Regularization" (ICLR 2019) as ``torch.optim.AdamW`` computes it (its
single-tensor path, ``foreach=False``): the same operations in the same
order in the parameter's dtype, in place, into work arrays made once. Where
PyTorch fuses a multiply-add (``lerp_``, ``addcmul_``) and where its
vectorised ``sqrt`` is one unit in the last place off, numpy rounds its own
way, so numpy and PyTorch runs agree to about 1e-6 after hundreds of steps
rather than to the last bit. ``SGD`` has one multiply-add per weight, cheap
to round once exactly as PyTorch's fused ``add_`` does, so it agrees to the
bit.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from tinylm import pytorch
from tinylm.errors import CheckpointError, ConfigError
from tinylm.micrograd import nn as micrograd_nn
from tinylm.layers import TORCH_BACKENDS

SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")


# --- what an optimizer updates: numpy arrays, whatever holds them ---------------------------


def _array_params(params: Iterable[Any]) -> list:
    """numpy Parameters: ``.data`` and ``.grad`` arrays, updated in place."""
    params = list(params)
    if not params:
        raise ConfigError("the optimizer got no parameters")
    if all(isinstance(getattr(p, "data", None), np.ndarray) for p in params):
        return params
    raise TypeError("parameters must all be numpy Parameters "
                    "(scalar-engine Values have tinylm.micrograd.nn.SGD and AdamW)")


class _Scratch:
    """Work arrays of one parameter's shape, made once: a step allocates nothing.

    ``fma(a, b, c, out)`` is a * b + c rounded once, as a fused multiply-add
    does: for float32 the float64 product of two float32 numbers is exact, so
    only the final store rounds (up to a double-rounding tie, which is rare
    enough not to matter here). float64 is computed as written.
    """

    def __init__(self, like: np.ndarray) -> None:
        self.a = np.empty_like(like)
        self.b = np.empty_like(like)
        self.wide = np.empty(like.shape, dtype=np.float64) if like.dtype == np.float32 else None

    def fma(self, a: np.ndarray, b: np.ndarray | float, c: np.ndarray, out: np.ndarray) -> None:
        if self.wide is None:
            np.multiply(a, b, out=self.b)
            np.add(self.b, c, out=out)
            return
        if not isinstance(b, np.ndarray):
            b = np.float64(np.float32(b))  # a scalar meets float32 as float32
        np.multiply(a, b, out=self.wide, dtype=np.float64)
        np.add(self.wide, c, out=self.wide, dtype=np.float64)
        np.copyto(out, self.wide, casting="same_kind")


class _LearningRate:
    """The settable ``lr`` of every optimizer here, checked where it is set: a run's
    settings are checked before (their kind), a schedule sets it before each update."""

    _lr: float

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"the learning rate must be a finite number >= 0, got {value!r}")
        self._lr = float(value)


class _Optimizer(_LearningRate):
    """Shared: the parameters, ``lr``, the step count, zero_grad, preallocated work arrays."""

    kind = ""

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        self.lr = lr
        self.params = _array_params(params)
        self.steps = 0  # how many updates so far (PyTorch's per-parameter "step")
        self._scratch: list[_Scratch] = []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = np.zeros_like(p.data)

    def step(self) -> None:
        self.steps += 1
        for i, param in enumerate(self.params):
            data, grad = param.data, param.grad
            if i >= len(self._scratch) or self._scratch[i].a.shape != data.shape \
                    or self._scratch[i].a.dtype != data.dtype:
                del self._scratch[i:]
                self._scratch.append(_Scratch(data))
            self._update(i, data, grad, self._scratch[i])

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, work: _Scratch) -> None:
        """Update the array ``p`` in place from its gradient ``g``."""
        raise NotImplementedError

    def _buffers(self) -> dict[str, list[np.ndarray]]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """{"step": 0-d int64 array, "<buffer>.<i>": array per parameter}, all numpy."""
        out = {"step": np.array(self.steps, dtype=np.int64)}
        for name, arrays in self._buffers().items():
            for i, a in enumerate(arrays):
                out[f"{name}.{i}"] = a.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        _load_buffers(self._buffers(), state)
        self.steps = int(state["step"])


def _load_buffers(buffers: Mapping[str, list[np.ndarray]], state: Mapping[str, np.ndarray]) -> None:
    """Copy "<name>.<i>" arrays from ``state`` into ``buffers`` in place, checking everything."""
    expected = {"step"} | {f"{name}.{i}" for name, arrays in buffers.items()
                           for i in range(len(arrays))}
    if set(state) != expected:
        raise CheckpointError("the saved optimizer state does not fit this model's parameters")
    for name, arrays in buffers.items():
        for i, a in enumerate(arrays):
            value = np.asarray(state[f"{name}.{i}"])
            if value.shape != a.shape:
                raise CheckpointError(
                    f"the saved optimizer state {name}.{i} has shape {value.shape}, expected {a.shape}")
            a[...] = value


class SGD(_Optimizer):
    """Plain gradient descent, ``p -= lr * (g + weight_decay * p)``, as torch.optim.SGD."""

    kind = "sgd"

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        _check_weight_decay(weight_decay)
        self.weight_decay = float(weight_decay)

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, work: _Scratch) -> None:
        if self.weight_decay != 0:
            work.fma(p, self.weight_decay, g, out=work.a)    # grad.add(param, alpha=weight_decay)
            g = work.a
        work.fma(g, -self.lr, p, out=p)                      # param.add_(grad, alpha=-lr)


class AdamW(_Optimizer):
    """Adam with decoupled weight decay, the update of torch.optim.AdamW step for step.

    Weight decay multiplies every parameter by ``1 - lr * weight_decay``
    before the Adam step (PyTorch decays all parameters unless told
    otherwise, and so does this). Defaults are PyTorch's.
    """

    kind = "adamw"

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr)
        _check_weight_decay(weight_decay)
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {eps}")
        self.betas = (float(beta1), float(beta2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]

    def _buffers(self) -> dict[str, list[np.ndarray]]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, work: _Scratch) -> None:
        # Line for line torch/optim/adam.py, _single_tensor_adam with decoupled decay,
        # every operation in place in the parameter's dtype. Scalars are Python floats
        # (float64) until they meet an array, which casts them to its dtype, as PyTorch
        # does. Where PyTorch fuses a multiply-add (lerp_, addcmul_) numpy rounds twice:
        # exact emulation through float64 would cost as much as the step's matmuls.
        lr, (beta1, beta2), eps, step = self.lr, self.betas, self.eps, self.steps
        dt = p.dtype.type
        exp_avg, exp_avg_sq, t = self.exp_avg[i], self.exp_avg_sq[i], work.a
        if self.weight_decay != 0:
            p *= dt(1 - lr * self.weight_decay)                    # param.mul_(1 - lr * wd)
        np.subtract(g, exp_avg, out=t)
        t *= dt(1 - beta1)
        exp_avg += t                                               # exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq *= dt(beta2)                                    # exp_avg_sq.mul_(beta2)
        np.multiply(g, dt(1 - beta2), out=t)
        t *= g
        exp_avg_sq += t                                            # .addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = np.sqrt(exp_avg_sq, out=t)
        denom /= dt(bias_correction2_sqrt)
        denom += dt(eps)                                           # denom = sqrt(v) / bc2_sqrt + eps
        update = np.multiply(exp_avg, dt(-step_size), out=work.b)
        update /= denom
        p += update                                                # param.addcdiv_(exp_avg, denom, value=-step_size)


# --- the scalar engine -----------------------------------------------------------------------


class ValueOptimizer(_LearningRate):
    """A ``tinylm.micrograd.nn`` optimizer (SGD or AdamW over Values) behind the interface above.

    The update is that module's own; this adds the numpy state dict of a checkpoint:
    "step" and one float64 vector per buffer ("exp_avg.0", "exp_avg_sq.0")
    over all the Values in ``parameters()`` order.
    """

    def __init__(self, optimizer: micrograd_nn.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def _lr(self) -> float:  # the wrapped optimizer's own: it reads it in its step
        return self.optimizer.lr

    @_lr.setter
    def _lr(self, value: float) -> None:
        self.optimizer.lr = value

    @property
    def steps(self) -> int:
        return self.optimizer.steps

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def state_dict(self) -> dict[str, np.ndarray]:
        state = self.optimizer.state_dict()
        out = {"step": np.array(state.pop("step"), dtype=np.int64)}
        for name, values in state.items():
            out[f"{name}.0"] = np.array(values, dtype=np.float64)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        buffers = {name: [np.zeros(len(values))]
                   for name, values in self.optimizer.state_dict().items() if name != "step"}
        _load_buffers(buffers, state)
        self.optimizer.load_state_dict(
            {"step": int(state["step"]), **{name: arrays[0].tolist() for name, arrays in buffers.items()}})


# --- the PyTorch backends --------------------------------------------------------------------


class TorchOptimizer(_LearningRate):
    """SGD or AdamW for tensors: ``torch.optim``'s update, to the bit.

    SGD is ``torch.optim.SGD``'s tensor operations, each applied to all the
    tensors in one ``torch._foreach_*`` call; AdamW is the fused kernel of
    ``torch.optim.AdamW(fused=True)``, the whole update in one pass over
    each tensor. The numbers are theirs to the bit (a test holds them side by
    side), and agree with the numpy AdamW, which follows the separate
    operations, to about 1e-7 a step. They are called here rather than
    through ``torch.optim`` because creating a ``torch.optim`` optimizer
    imports the compiler stack (``torch._dynamo``), over a second of every
    run's start, for nothing a training step uses. The state dict has
    the keys of the numpy optimizers ("step", "exp_avg.<i>", "exp_avg_sq.<i>"),
    so a state saved by one backend loads into another.
    """

    def __init__(self, params: Iterable[Any], kind: str, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        torch = pytorch.load()

        self.params = list(params)
        if not self.params:
            raise ConfigError("the optimizer got no parameters")
        self.kind = kind
        self.lr = lr
        self.weight_decay = float(weight_decay)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.steps = 0
        moments = ("exp_avg", "exp_avg_sq") if kind == "adamw" else ()
        self.buffers = {name: [torch.zeros_like(p, memory_format=torch.preserve_format)
                               for p in self.params] for name in moments}

    def step(self) -> None:
        torch = pytorch.load()

        self.steps += 1
        with torch.no_grad():
            pairs = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
            if not pairs:
                return
            params, grads = [p for _, p in pairs], [p.grad for _, p in pairs]
            if self.kind == "adamw":
                self._adamw([i for i, _ in pairs], params, grads)
            else:
                self._sgd(params, grads)

    def _sgd(self, params: list, grads: list) -> None:
        torch = pytorch.load()

        # torch.optim.SGD's single-tensor arithmetic, each op over every tensor in one
        # _foreach call (its foreach path, the same numbers)
        if self.weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def _adamw(self, which: list[int], params: list, grads: list) -> None:
        torch = pytorch.load()

        # torch.optim.AdamW(fused=True)'s kernel: the whole update in one pass over each
        # tensor, a quarter of the time of a dozen separate tensor operations. torch.optim
        # counts steps in a float32 tensor per parameter, which the kernel reads.
        step = torch.tensor(float(self.steps), dtype=torch.float32, device=params[0].device)
        torch._fused_adamw_(params, grads, [self.buffers["exp_avg"][i] for i in which],
                            [self.buffers["exp_avg_sq"][i] for i in which], [],
                            [step] * len(params), lr=self.lr, beta1=self.betas[0],
                            beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
                            amsgrad=False, maximize=False)

    @property
    def param_groups(self) -> list[dict]:
        """What ``torch.amp.GradScaler`` reads to unscale the gradients (float16 runs)."""
        return [{"params": self.params}]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"step": np.array(self.steps, dtype=np.int64)}
        for name, tensors in self.buffers.items():
            for i, t in enumerate(tensors):
                out[f"{name}.{i}"] = t.detach().cpu().numpy().copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        torch = pytorch.load()

        arrays = {name: [np.zeros(tuple(t.shape), dtype=np.float32) for t in tensors]
                  for name, tensors in self.buffers.items()}
        _load_buffers(arrays, state)
        self.steps = int(state["step"])
        with torch.no_grad():
            for name, tensors in self.buffers.items():
                for t, a in zip(tensors, arrays[name]):
                    t.copy_(torch.from_numpy(a))


def make_optimizer(model: Any, kind: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """The optimizer ``kind`` ("adamw" or "sgd") for ``model``'s parameters on its backend.

    numpy models get ``AdamW``/``SGD`` above; micrograd models tinylm.micrograd.nn's
    wrapped in ``ValueOptimizer``; torch models ``TorchOptimizer``, which computes
    torch.optim.AdamW/SGD's single-tensor update.
    """
    if kind not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
    _check_weight_decay(weight_decay)
    params = model.parameters()
    if model.backend in TORCH_BACKENDS:
        return TorchOptimizer(params, kind, lr, weight_decay, betas, eps)
    if model.backend == "micrograd":
        if kind == "adamw":
            opt = micrograd_nn.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        else:
            opt = micrograd_nn.SGD(params, lr=lr, weight_decay=weight_decay)
        return ValueOptimizer(opt)
    if kind == "adamw":
        return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return SGD(params, lr=lr, weight_decay=weight_decay)


# --- learning-rate schedules -----------------------------------------------------------------


def lr_at(step: int, steps: int, base_lr: float, schedule: str = "constant",
          drop_at: float = 0.75, drop_factor: float = 0.1, warmup: int = 0) -> float:
    """The learning rate for update number ``step`` (0-based) of ``steps``; set it before the update.

    warmup:   the first ``warmup`` updates climb linearly to base_lr (update i at
              base_lr * (i + 1) / warmup), so that Adam's first steps, taken
              while its moment estimates rest on a few gradients, stay small.
              A cosine then runs over the remaining steps (its first update at
              base_lr, as the warmup's last); step keeps its drop point.
    constant: base_lr throughout.
    cosine:   base_lr * 0.5 * (1 + cos(pi * progress)), from base_lr down towards 0.
    step:     base_lr for the first ``drop_at`` fraction of the steps, then base_lr * drop_factor.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if steps < 1:
        raise ConfigError(f"the number of steps must be >= 1, got {steps}")
    if not 0 <= warmup < steps:
        raise ConfigError(f"the warmup ({warmup} steps) must be shorter than the run ({steps} steps)")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
    return base_lr if step < drop_at * steps else base_lr * drop_factor


def _check_weight_decay(wd: float) -> None:
    if not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"weight decay must be a finite number >= 0, got {wd!r}")
