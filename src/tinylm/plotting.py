"""Pictures of training: loss curves, the health statistics' histograms, update:data.

matplotlib is an optional dependency (``pip install 'tinylm[plot]'``):
``headless_pyplot`` imports it, with the headless Agg backend, only when a
plot is drawn, so the rest of tinylm never needs it; tinylm.ngram_plot
draws the bigram heat map through it too. The statistics the histograms
show are tinylm.layer_stats.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from tinylm.errors import ConfigError
from tinylm.io import atomic_write_bytes
from tinylm.layer_stats import Snapshot, smooth

if TYPE_CHECKING:  # matplotlib is optional: only for the annotations
    from matplotlib.figure import Figure

UPDATE_RATIO_GUIDE = -3.0  # log10 of the 1e-3 guide line

# Each plot is drawn by a ``*_figure`` function, which returns the matplotlib
# Figure (for a caller that wants to look at it, or test it, before saving),
# and saved by the matching ``plot_*`` function, which returns the PNG's path.

MIN_LINE_POINTS = 3  # fewer points of a series are drawn as markers: no trend was measured


def headless_pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend; a ConfigError that says how to install it if absent."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'tinylm[plot]'") from None
    matplotlib.use("Agg")  # headless: never open a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    headless_pyplot().close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _title(what: str, step: int | None = None, run: str | None = None) -> str:
    """"<run>: <what> at step <step>", leaving out what is not known."""
    title = what if step is None else f"{what} at step {step}"
    return title if run is None else f"{run}: {title}"


def _step_axis(ax) -> None:
    """Label the x axis as steps, ticked at whole steps only (a short run has no step 0.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series_style(n: int) -> dict[str, Any]:
    """Line style for a series of n points: a line only when there is a trend to draw."""
    if n < MIN_LINE_POINTS:
        return {"linestyle": "none", "marker": "o"}
    return {"marker": "o" if n < 30 else None}


def _histogram_figure(arrays: Mapping[str, np.ndarray], title: str, xlabel: str,
                      legend: Iterable[str], bins: int = 50) -> Figure:
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for (name, arr), label in zip(arrays.items(), legend):
        a = np.asarray(arr, dtype=np.float64).ravel()
        if a.size == 0:
            continue
        hy, hx = np.histogram(a, bins=bins, density=True)
        ax.plot(0.5 * (hx[:-1] + hx[1:]), hy, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if arrays:
        ax.legend(fontsize="small")
    return fig


def activation_figure(snap: Snapshot, step: int | None = None, run: str | None = None) -> Figure:
    """Histogram of each nonlinearity's output, one curve per layer."""
    legend = [f"{s.name}: mean {s.mean:+.2f}, std {s.std:.2f}, saturated {s.saturation:.1f}%"
              for s in snap.activation_stats]
    title = _title("activations (nonlinearity outputs)", step, run)
    return _histogram_figure(snap.activations, title, "activation value", legend)


def gradient_figure(snap: Snapshot, step: int | None = None, run: str | None = None) -> Figure:
    """Histogram of the loss gradient at each nonlinearity's output."""
    legend = [f"{g.name}: mean {g.mean:+.2e}, std {g.std:.2e}" for g in snap.gradient_stats]
    title = _title("gradient of the loss w.r.t. the activations", step, run)
    return _histogram_figure(snap.gradients, title, "gradient value", legend)


def weight_gradient_figure(snap: Snapshot, step: int | None = None, run: str | None = None) -> Figure:
    """Histogram of the loss gradient of each weight matrix."""
    legend = [f"{w.name} {'x'.join(map(str, w.shape))}: grad:data {w.grad_data_ratio:.2e}"
              for w in snap.weight_stats]
    title = _title("gradient of the loss w.r.t. the weight matrices", step, run)
    return _histogram_figure(snap.weight_grads, title, "weight gradient value", legend)


def plot_activation_histograms(snap: Snapshot, path: str | os.PathLike, step: int | None = None,
                               run: str | None = None) -> Path:
    return _save(activation_figure(snap, step, run), path)


def plot_gradient_histograms(snap: Snapshot, path: str | os.PathLike, step: int | None = None,
                             run: str | None = None) -> Path:
    return _save(gradient_figure(snap, step, run), path)


def plot_weight_gradient_histograms(snap: Snapshot, path: str | os.PathLike, step: int | None = None,
                                    run: str | None = None) -> Path:
    return _save(weight_gradient_figure(snap, step, run), path)


def update_ratio_figure(steps: Sequence[int], ratios: Mapping[str, Sequence[float]],
                        run: str | None = None) -> Figure:
    """log10(update:data) per weight matrix over training, with the -3 guide line."""
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, values in ratios.items():
        ax.plot(list(steps)[: len(values)], values, label=name, **_series_style(len(values)))
    ax.axhline(UPDATE_RATIO_GUIDE, color="k", linestyle="--", label="1e-3 guide")
    ax.set_title(_title("update:data ratio per weight matrix (one step of the run's optimizer)", run=run))
    _step_axis(ax)
    ax.set_ylabel("log10(std(optimizer update) / std(weights))")
    ax.legend(fontsize="small")
    return fig


def plot_update_ratios(steps: Sequence[int], ratios: Mapping[str, Sequence[float]],
                       path: str | os.PathLike, run: str | None = None) -> Path:
    return _save(update_ratio_figure(steps, ratios, run), path)


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


def _smoothing_window(n: int, window: int | None = None) -> int:
    """The batch-loss window for n points: ``window``, or 1/50 of them, never more than n."""
    if window is not None and window < 1:
        raise ConfigError(f"smoothing window must be >= 1, got {window}")
    return max(1, min(window or n // 50, n))


def loss_figure(records: Iterable[Mapping[str, Any]], window: int | None = None,
                run: str | None = None) -> Figure:
    """Train/val loss from metrics.jsonl records; the batch loss is smoothed.

    ``window`` defaults to 1/50 of the number of batch-loss points, so the
    curve reads the same for short and long runs; a window of 1 (any run
    under 100 steps) smooths nothing, so the batch loss is then drawn once,
    as measured. A series of fewer than MIN_LINE_POINTS points gets markers
    and no joining line.
    """
    series = loss_series(records)
    if not series:
        raise ConfigError("metrics have no loss records to plot")
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    shown: list[float] = []  # what the y-axis must hold; single noisy batches may be cut off
    curves = []
    if "batch" in series:
        steps, values = series["batch"]
        w = _smoothing_window(len(values), window)
        if w == 1:
            ax.plot(steps, values, label="batch loss", **_series_style(len(values)))
            shown += values
            curves.append("batch")
        else:
            smoothed = smooth(values, w)
            ax.plot(steps, values, color="0.85", linewidth=0.5, label="batch loss")
            ax.plot(steps, smoothed, label=f"batch loss (mean of {w})")
            shown += smoothed.tolist()
            curves.append(f"batch (mean of {w})")
    for label in ("train", "val"):
        if label in series:
            steps, values = series[label]
            ax.plot(steps, values, label=f"{label} loss", **_series_style(len(values)))
            shown += values
            curves.append(label)
    lo, hi = min(shown), max(shown)
    pad = 0.05 * (hi - lo) or 0.05
    ax.set_ylim(lo - pad, hi + pad)
    _step_axis(ax)
    ax.set_ylabel("loss (nats per character)")
    names = ", ".join(curves[:-1]) + (" and " if len(curves) > 1 else "") + curves[-1]
    ax.set_title(_title(f"{names} loss", run=run))
    ax.legend(fontsize="small")
    return fig


def plot_loss_curve(records: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                    window: int | None = None, run: str | None = None) -> Path:
    return _save(loss_figure(records, window, run), path)

