"""Training diagnostics: is this deep network healthy, and if not, where?

The checks follow the recipe of "Kaiming init, BatchNorm, and activation,
gradient and update statistics" used to debug deep tanh networks:

* activations: mean, std and the fraction of saturated units (|tanh| > 0.97,
  where the local gradient 1 - t**2 is below 0.06 and learning nearly stops);
  *dead* units are saturated (or, after a ReLU, zero) for every example of
  the batch, so no example sends any gradient through them;
* gradients at each activation: mean and std, which should be of similar
  size in every layer (no vanishing or exploding through depth);
* weight matrices: gradient mean and std and the grad:data std ratio;
* the update:data ratio ``log10(std(lr * grad) / std(data))`` over training,
  which for a well-tuned learning rate hovers around -3 (updates change each
  weight by about a thousandth of its size per step).

The statistics are plain functions of numpy arrays, so they are identical for
every backend; ``snapshot`` gathers them from a model's ``layers``. The plots
use matplotlib with the headless Agg backend, imported only when a plot is
drawn so the rest of tinylm never needs matplotlib.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tinylm.errors import ConfigError

SATURATION_THRESHOLD = 0.97
UPDATE_RATIO_GUIDE = -3.0  # log10 of the 1e-3 guide line


# --- statistics on plain arrays -------------------------------------------------------

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
    d = np.asarray(data, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    if d.shape != g.shape:
        raise ConfigError(f"{name}: gradient shape {g.shape} differs from data shape {d.shape}")
    return WeightStats(name, tuple(d.shape), float(g.mean()), float(g.std()),
                       _ratio(float(g.std()), float(d.std())))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.inf


def update_ratio(data: np.ndarray, grad: np.ndarray, lr: float) -> float:
    """``log10(std(lr * grad) / std(data))`` for one plain SGD step (-inf if nothing moves)."""
    d = np.asarray(data, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    num = float((lr * g).std())
    den = float(d.std())
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


# --- gathering statistics from a model ------------------------------------------------

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
    """Build a ``Snapshot`` from arrays gathered by any backend.

    ``activations`` maps layer name -> output; ``gradients`` maps the same
    names -> gradient of the loss at that output (None when unavailable);
    ``weights`` maps parameter name -> (data, grad) for the weight matrices.
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


# --- text ---------------------------------------------------------------------------

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


# --- plots --------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'tinylm[plot]'") from None
    matplotlib.use("Agg")  # headless: never open a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from tinylm.io import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    _pyplot().close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _histogram_plot(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, title: str,
                    legend: Iterable[str], bins: int = 50) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for (name, arr), label in zip(arrays.items(), legend):
        a = np.asarray(arr, dtype=np.float64).ravel()
        if a.size == 0:
            continue
        hy, hx = np.histogram(a, bins=bins, density=True)
        ax.plot(0.5 * (hx[:-1] + hx[1:]), hy, label=label)
    ax.set_title(title)
    ax.set_ylabel("density")
    if arrays:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_activation_histograms(snap: Snapshot, path: str | os.PathLike) -> Path:
    legend = [f"{s.name}: mean {s.mean:+.2f}, std {s.std:.2f}, saturated {s.saturation:.1f}%"
              for s in snap.activation_stats]
    return _histogram_plot(snap.activations, path, "activation distribution", legend)


def plot_gradient_histograms(snap: Snapshot, path: str | os.PathLike) -> Path:
    legend = [f"{g.name}: mean {g.mean:+.2e}, std {g.std:.2e}" for g in snap.gradient_stats]
    return _histogram_plot(snap.gradients, path, "gradient distribution at activations", legend)


def plot_weight_gradient_histograms(snap: Snapshot, path: str | os.PathLike) -> Path:
    legend = [f"{w.name} {'x'.join(map(str, w.shape))}: grad:data {w.grad_data_ratio:.2e}"
              for w in snap.weight_stats]
    return _histogram_plot(snap.weight_grads, path, "weight gradient distribution", legend)


def plot_update_ratios(steps: Sequence[int], ratios: Mapping[str, Sequence[float]],
                       path: str | os.PathLike) -> Path:
    """log10(update:data) per weight matrix over training, with the -3 guide line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, values in ratios.items():
        ax.plot(list(steps)[: len(values)], values, label=name)
    ax.axhline(UPDATE_RATIO_GUIDE, color="k", linestyle="--", label="1e-3 guide")
    ax.set_title("update:data ratio")
    ax.set_xlabel("step")
    ax.set_ylabel("log10(std(lr*grad) / std(data))")
    ax.legend(fontsize="small")
    return _save(fig, path)


def loss_series(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) per curve found in metrics records.

    Per-step records carry ``loss`` (the batch loss); evaluation records carry
    ``train_loss`` and ``val_loss``. Records without a step (the final test
    record) are skipped.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        if "step" not in r:
            continue
        for key, label in (("loss", "batch"), ("train_loss", "train"), ("val_loss", "val")):
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                steps, values = series.setdefault(label, ([], []))
                steps.append(int(r["step"]))
                values.append(float(v))
    return series


def plot_loss_curve(records: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                    window: int | None = None) -> Path:
    """Train/val loss from metrics.jsonl records; the batch loss is smoothed.

    ``window`` defaults to 1/50 of the number of batch-loss points, so the
    curve reads the same for short and long runs.
    """
    series = loss_series(records)
    if not series:
        raise ConfigError("metrics have no loss records to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    if "batch" in series:
        steps, values = series["batch"]
        w = window or max(1, len(values) // 50)
        ax.plot(steps, values, color="0.85", linewidth=0.5, label="batch loss")
        ax.plot(steps, smooth(values, w), label=f"batch loss (mean of {w})")
    for label in ("train", "val"):
        if label in series:
            steps, values = series[label]
            ax.plot(steps, values, marker="o" if len(values) < 30 else None, label=f"{label} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title("loss")
    ax.legend(fontsize="small")
    return _save(fig, path)
