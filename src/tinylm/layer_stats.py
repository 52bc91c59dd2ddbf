"""Statistics of a network's health, from plain arrays: is each layer learning?

The checks follow the recipe of "Kaiming init, BatchNorm, and activation,
gradient and update statistics" used to debug deep tanh networks:

* activations: mean, std and the fraction of saturated units (|tanh| > 0.97,
  where the local gradient 1 - t**2 is below 0.06 and learning nearly stops);
  *dead* units are saturated (or, after a ReLU, zero) for every example of
  the batch, so no example sends any gradient through them;
* gradients at each activation: mean and std, which should be of similar
  size in every layer (no vanishing or exploding through depth);
* weight matrices: gradient mean and std and the grad:data std ratio;
* the update:data ratio ``log10(std(update) / std(data))`` of one step; for
  a well-tuned learning rate it hovers around -3 (updates change each
  weight by about a thousandth of its size per step).

Numpy arrays in, numbers and frozen dataclasses out: nothing here knows a
model or a backend, so the figures are the same whatever computed the
arrays. ``Snapshot`` gathers one batch's statistics and ``format_table``
writes them as text; gathering them from a model is tinylm.diagnostics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from tinylm.errors import ConfigError

SATURATION_THRESHOLD = 0.97


def _units(x: np.ndarray) -> np.ndarray:
    """View an activation as (examples, units): (B, C) or (B, T, C) -> (B*T, C)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ConfigError("an activation must have at least one axis")
    if x.ndim == 1:
        return x.reshape(-1, 1)
    return x.reshape(-1, x.shape[-1])


def saturation(out: np.ndarray, threshold: float = SATURATION_THRESHOLD) -> float:
    """Percentage of entries of a tanh output with ``|t| > threshold``."""
    x = np.asarray(out)
    if x.size == 0:
        return 0.0
    return float(np.mean(np.abs(x) > threshold) * 100.0)


def dead_units(out: np.ndarray, kind: str = "tanh",
               threshold: float = SATURATION_THRESHOLD) -> np.ndarray:
    """Boolean mask (units,) of units never active for any example in the batch.

    For ``tanh`` a unit is inactive on an example when it is saturated
    (``|t| > threshold``); for ``relu`` when its output is zero. The last axis
    holds the units; every other axis counts as examples.
    """
    x = _units(out)
    if kind == "tanh":
        inactive = np.abs(x) > threshold
    elif kind == "relu":
        inactive = x <= 0.0
    else:
        raise ConfigError(f"unknown activation kind {kind!r}; choose 'tanh' or 'relu'")
    return np.all(inactive, axis=0)


@dataclass(frozen=True)
class ActivationStats:
    """One activation layer's output statistics (saturation in percent)."""

    name: str
    mean: float
    std: float
    saturation: float
    dead: int
    units: int


def activation_stats(name: str, out: np.ndarray, kind: str = "tanh",
                     threshold: float = SATURATION_THRESHOLD) -> ActivationStats:
    """Mean, std, saturation (for a ReLU: the percentage at zero) and dead units of ``out``."""
    x = np.asarray(out, dtype=np.float64)
    dead = dead_units(x, kind, threshold)
    sat = saturation(x, threshold) if kind == "tanh" else float(np.mean(x <= 0.0) * 100.0)
    return ActivationStats(name, float(x.mean()), float(x.std()), sat, int(dead.sum()), int(dead.size))


@dataclass(frozen=True)
class GradStats:
    """Mean and std of the loss gradient at one activation."""

    name: str
    mean: float
    std: float


def grad_stats(name: str, grad: np.ndarray) -> GradStats:
    """Mean and std of the loss gradient ``grad`` at the activation ``name``."""
    g = np.asarray(grad, dtype=np.float64)
    return GradStats(name, float(g.mean()), float(g.std()))


@dataclass(frozen=True)
class WeightStats:
    """A weight matrix's gradient statistics and its grad:data std ratio."""

    name: str
    shape: tuple[int, ...]
    grad_mean: float
    grad_std: float
    grad_data_ratio: float


def weight_stats(name: str, data: np.ndarray, grad: np.ndarray) -> WeightStats:
    """The gradient statistics of the weight matrix ``name`` and its grad:data std ratio."""
    d = np.asarray(data, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    if d.shape != g.shape:
        raise ConfigError(f"{name}: gradient shape {g.shape} differs from data shape {d.shape}")
    return WeightStats(name, tuple(d.shape), float(g.mean()), float(g.std()),
                       _ratio(float(g.std()), float(d.std())))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.inf


def update_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """``log10(std(after - before) / std(before))``: one step's update of a weight matrix.

    -inf if the step left the weights as they were.
    """
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"the weights changed shape in a step: {b.shape} -> {a.shape}")
    num = float((a - b).std())
    den = float(b.std())
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    if num == 0.0:
        return -math.inf
    return math.log10(num / den)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average; the first points average what is available so far."""
    if window < 1:
        raise ConfigError(f"smoothing window must be >= 1, got {window}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


@dataclass
class Snapshot:
    """Everything measured on one batch: per activation layer and per weight matrix.

    ``activations`` / ``gradients`` hold the raw arrays (for histograms) by
    layer name; ``weight_grads`` the raw weight gradients by parameter name.
    """

    activation_stats: list[ActivationStats]
    gradient_stats: list[GradStats]
    weight_stats: list[WeightStats]
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    weight_grads: dict[str, np.ndarray]

    def to_record(self) -> dict[str, Any]:
        """The numbers only, JSON-ready (the arrays are left out)."""
        return {
            "activations": [asdict(s) for s in self.activation_stats],
            "gradients": [asdict(s) for s in self.gradient_stats],
            "weights": [{**asdict(s), "shape": list(s.shape)} for s in self.weight_stats],
        }


def snapshot_from_arrays(activations: Mapping[str, np.ndarray],
                         gradients: Mapping[str, np.ndarray | None],
                         weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         kinds: Mapping[str, str] | None = None) -> Snapshot:
    """Build a ``Snapshot`` from arrays, whatever computed them.

    ``activations`` maps layer name -> output; ``gradients`` maps the same
    names -> gradient of the loss at that output (None when unavailable);
    ``weights`` maps parameter name -> (data, grad) for the weight matrices;
    ``kinds`` maps layer name -> "tanh" (the default) or "relu".
    """
    kinds = kinds or {}
    act = {k: np.asarray(v, dtype=np.float64) for k, v in activations.items()}
    grads = {k: np.asarray(v, dtype=np.float64) for k, v in gradients.items() if v is not None}
    wgrads = {k: np.asarray(g, dtype=np.float64) for k, (_, g) in weights.items()}
    return Snapshot(
        activation_stats=[activation_stats(k, v, kinds.get(k, "tanh")) for k, v in act.items()],
        gradient_stats=[grad_stats(k, v) for k, v in grads.items()],
        weight_stats=[weight_stats(k, d, g) for k, (d, g) in weights.items()],
        activations=act,
        gradients=grads,
        weight_grads=wgrads,
    )


def format_table(snap: Snapshot, update_ratios: Mapping[str, float] | None = None) -> str:
    """The snapshot as fixed-width text tables (the CLI prints this)."""
    lines = ["activations (saturated: |t| > %.2f; dead: inactive on every example)" % SATURATION_THRESHOLD,
             f"  {'layer':<24}{'mean':>10}{'std':>10}{'saturated':>11}{'dead':>12}"]
    for s in snap.activation_stats:
        lines.append(f"  {s.name:<24}{s.mean:>+10.4f}{s.std:>10.4f}{s.saturation:>10.2f}%"
                     f"{f'{s.dead}/{s.units}':>12}")
    if snap.gradient_stats:
        lines += ["", "gradients at activations",
                  f"  {'layer':<24}{'mean':>12}{'std':>12}"]
        for g in snap.gradient_stats:
            lines.append(f"  {g.name:<24}{g.mean:>+12.3e}{g.std:>12.3e}")
    lines += ["", "weight matrices",
              f"  {'parameter':<24}{'shape':>14}{'grad mean':>12}{'grad std':>12}{'grad:data':>12}"
              + (f"{'log10 upd:data':>16}" if update_ratios else "")]
    for w in snap.weight_stats:
        shape = "x".join(str(n) for n in w.shape)
        row = (f"  {w.name:<24}{shape:>14}{w.grad_mean:>+12.3e}{w.grad_std:>12.3e}"
               f"{w.grad_data_ratio:>12.3e}")
        if update_ratios:
            r = update_ratios.get(w.name)
            row += f"{r:>16.2f}" if r is not None else f"{'-':>16}"
        lines.append(row)
    return "\n".join(lines)
