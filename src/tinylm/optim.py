"""Optimizers and learning-rate schedules.

``SGD`` and ``AdamW`` update numpy ``Parameter``s (tinylm.layers.numpy_layers).
The scalar engine's ``Value``s have their own, in pure Python
(tinylm.micrograd.nn), wrapped by ``ValueOptimizer``, and the PyTorch
backends use ``torch.optim`` itself, wrapped by ``TorchOptimizer``, so that a
trainer sees one interface for every backend: ``step()``, ``zero_grad()``, a
settable ``lr``, and ``state_dict()``/``load_state_dict()`` of numpy arrays.
``make_optimizer`` picks the right one for a model.

``AdamW`` is Loshchilov and Hutter's "Decoupled Weight Decay
Regularization" (ICLR 2019) exactly as ``torch.optim.AdamW`` computes it
(its single-tensor path, ``foreach=False``): the same operations in the
same order in the parameter's dtype, and where PyTorch uses a fused
multiply-add (``lerp_``, ``addcmul_``, ``add_`` with ``alpha``) the exact
product-sum rounded once. Only PyTorch's vectorised ``sqrt``, which may be
one unit in the last place off, is not reproduced, so numpy and PyTorch runs
agree to about 1e-6 after hundreds of steps rather than to the last bit.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from tinylm.errors import CheckpointError, ConfigError
from tinylm.micrograd import nn as micrograd_nn
from tinylm.models import TORCH_BACKENDS

SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")


# --- what an optimizer updates: numpy arrays, whatever holds them ---------------------------


class _ArraySlot:
    """A numpy Parameter: ``.data`` and ``.grad`` are arrays, updated as such."""

    def __init__(self, param: Any) -> None:
        self.param = param

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        return self.param.data, self.param.grad

    def set(self, data: np.ndarray) -> None:
        self.param.data = data

    def zero_grad(self) -> None:
        self.param.grad = np.zeros_like(self.param.data)


def _slots(params: Iterable[Any]) -> list:
    params = list(params)
    if not params:
        raise ConfigError("the optimizer got no parameters")
    if all(isinstance(getattr(p, "data", None), np.ndarray) for p in params):
        return [_ArraySlot(p) for p in params]
    raise TypeError("parameters must all be numpy Parameters "
                    "(scalar-engine Values have tinylm.micrograd.nn.SGD and AdamW)")


def _fma(a: np.ndarray, b: np.ndarray | float, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once, as a fused multiply-add does.

    For float32 the float64 product of two float32 numbers is exact, so only
    the final cast rounds (up to a double-rounding tie, which is rare enough
    not to matter here). float64 inputs are computed as written.
    """
    if c.dtype != np.float32:
        return a * b + c
    b = np.asarray(b, dtype=np.float32).astype(np.float64)  # a scalar meets float32 as float32
    return (a.astype(np.float64) * b + c.astype(np.float64)).astype(np.float32)


class _Optimizer:
    """Shared: the parameter slots, ``lr``, the step count, zero_grad."""

    kind = ""

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        _check_lr(lr)
        self.slots = _slots(params)
        self.lr = float(lr)
        self.steps = 0  # how many updates so far (PyTorch's per-parameter "step")

    def zero_grad(self) -> None:
        for slot in self.slots:
            slot.zero_grad()

    def step(self) -> None:
        self.steps += 1
        for i, slot in enumerate(self.slots):
            data, grad = slot.get()
            slot.set(self._update(i, data, grad))

    def _update(self, i: int, p: np.ndarray, g: np.ndarray) -> np.ndarray:
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

    def _update(self, i: int, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.weight_decay != 0:
            g = _fma(p, self.weight_decay, g)            # grad.add(param, alpha=weight_decay)
        return _fma(g, -self.lr, p)                      # param.add_(grad, alpha=-lr)


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
        self.exp_avg = [np.zeros_like(slot.get()[0]) for slot in self.slots]
        self.exp_avg_sq = [np.zeros_like(slot.get()[0]) for slot in self.slots]

    def _buffers(self) -> dict[str, list[np.ndarray]]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def _update(self, i: int, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        # Line for line torch/optim/adam.py, _single_tensor_adam with decoupled decay.
        # Scalars are Python floats (float64) until they meet an array, which
        # casts them to the array's dtype, as PyTorch does.
        lr, (beta1, beta2), eps, step = self.lr, self.betas, self.eps, self.steps
        dt = p.dtype.type
        exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
        if self.weight_decay != 0:
            p = p * dt(1 - lr * self.weight_decay)                 # param.mul_(1 - lr * wd)
        exp_avg[...] = _fma(g - exp_avg, 1 - beta1, exp_avg)       # exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq *= dt(beta2)                                    # exp_avg_sq.mul_(beta2)
        exp_avg_sq[...] = _fma(dt(1 - beta2) * g, g, exp_avg_sq)   # .addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = np.sqrt(exp_avg_sq) / dt(bias_correction2_sqrt) + dt(eps)
        return p + (dt(-step_size) * exp_avg) / denom              # param.addcdiv_(exp_avg, denom, value=-step_size)


# --- the scalar engine -----------------------------------------------------------------------


class ValueOptimizer:
    """A ``tinylm.micrograd.nn`` optimizer (SGD or AdamW over Values) behind the interface above.

    The update is that module's own; this adds the numpy state dict of a checkpoint:
    "step" and one float64 vector per buffer ("exp_avg.0", "exp_avg_sq.0")
    over all the Values in ``parameters()`` order.
    """

    def __init__(self, optimizer: micrograd_nn.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        _check_lr(value)
        self.optimizer.lr = float(value)

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


class TorchOptimizer:
    """A torch.optim optimizer behind the interface of ``SGD``/``AdamW`` above.

    Its state dict has the same keys as theirs ("step", "exp_avg.<i>",
    "exp_avg_sq.<i>"), so an optimizer state saved by one backend loads
    into another.
    """

    def __init__(self, optimizer: Any, kind: str) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.steps = 0

    @property
    def params(self) -> list:
        return self.optimizer.param_groups[0]["params"]

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        _check_lr(value)
        for group in self.optimizer.param_groups:
            group["lr"] = float(value)

    def step(self) -> None:
        self.steps += 1
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _buffer_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") if self.kind == "adamw" else ()

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"step": np.array(self.steps, dtype=np.int64)}
        for i, p in enumerate(self.params):
            state = self.optimizer.state.get(p, {})
            for name in self._buffer_names():
                buf = state.get(name)
                out[f"{name}.{i}"] = (np.zeros(tuple(p.shape), dtype=np.float32) if buf is None
                                      else buf.detach().cpu().numpy().copy())
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        import torch

        buffers = {name: [np.zeros(tuple(p.shape), dtype=np.float32) for p in self.params]
                   for name in self._buffer_names()}
        _load_buffers(buffers, state)
        self.steps = int(state["step"])
        for i, p in enumerate(self.params):
            if not buffers:
                continue
            # what torch.optim.Adam keeps per parameter (step is a float32 tensor)
            self.optimizer.state[p] = {
                "step": torch.tensor(float(self.steps), dtype=torch.float32),
                **{name: torch.from_numpy(arrays[i]).to(p.dtype) for name, arrays in buffers.items()},
            }


def make_optimizer(model: Any, kind: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """The optimizer ``kind`` ("adamw" or "sgd") for ``model``'s parameters on its backend.

    numpy models get ``AdamW``/``SGD`` above; micrograd models tinylm.micrograd.nn's
    wrapped in ``ValueOptimizer``; torch models torch.optim.AdamW/SGD
    (single-tensor path) wrapped in ``TorchOptimizer``.
    """
    if kind not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
    _check_lr(lr)
    _check_weight_decay(weight_decay)
    params = model.parameters()
    if getattr(model, "backend", "") in TORCH_BACKENDS:
        import torch

        if kind == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps,
                                    weight_decay=weight_decay, foreach=False)
        else:
            opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, foreach=False)
        return TorchOptimizer(opt, kind)
    if getattr(model, "backend", "") == "micrograd":
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
          drop_at: float = 0.75, drop_factor: float = 0.1) -> float:
    """The learning rate for update number ``step`` (0-based) of ``steps``; set it before the update.

    constant: base_lr throughout.
    cosine:   base_lr * 0.5 * (1 + cos(pi * step / steps)), from base_lr down towards 0.
    step:     base_lr for the first ``drop_at`` fraction of the steps, then base_lr * drop_factor.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if steps < 1:
        raise ConfigError(f"the number of steps must be >= 1, got {steps}")
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
    return base_lr if step < drop_at * steps else base_lr * drop_factor


def _check_lr(lr: float) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"the learning rate must be a finite number >= 0, got {lr!r}")


def _check_weight_decay(wd: float) -> None:
    if not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"weight decay must be a finite number >= 0, got {wd!r}")
