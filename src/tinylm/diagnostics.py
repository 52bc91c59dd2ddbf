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
* the update:data ratio ``log10(std(update) / std(data))`` over training,
  where the update is what one step of the run's own optimizer (SGD or
  AdamW, at the run's learning rate) does to each weight matrix; for a
  well-tuned learning rate it hovers around -3 (updates change each weight
  by about a thousandth of its size per step).

The statistics are plain functions of numpy arrays, so they are identical for
every backend; ``measure`` gathers them from a model's ``layers`` into a
``Snapshot``. The plots use matplotlib with the headless Agg backend,
imported only when a plot is drawn so the rest of tinylm never needs
matplotlib.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tinylm.batches import Batches, make_split
from tinylm.errors import CheckpointError, ConfigError
from tinylm.io import append_jsonl, atomic_write_bytes, check_out_dir, make_out_dir, read_jsonl
from tinylm.models import is_sequence, layer_module
from tinylm.optim import make_optimizer
from tinylm.rng import RNG
from tinylm.runs import open_run
from tinylm.train import learning_rate

if TYPE_CHECKING:  # matplotlib is optional: only for the annotations
    from matplotlib.figure import Figure

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


# The nonlinearities by the name every backend module exports them under (see
# tinylm.layers), with the kind of statistics their outputs get.
NONLINEARITIES = {"Tanh": "tanh", "ReLU": "relu"}


def _array(x: Any) -> np.ndarray:
    """A numpy float64 copy of a numpy array, a torch tensor or nested scalar-engine Values."""
    if x is None:
        raise ConfigError("no array to measure")
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().astype(np.float64)
    if isinstance(x, list):
        return np.array(_nested(x, "data"), dtype=np.float64)
    # a copy even of float64: weights read before an optimizer step must not follow it
    return np.array(x, dtype=np.float64)


def _nested(x: Any, attr: str) -> Any:
    return [_nested(v, attr) for v in x] if isinstance(x, list) else getattr(x, attr)


def _grad_of(x: Any) -> np.ndarray | None:
    """The gradient held by a parameter or activation of any backend (None if absent)."""
    if isinstance(x, list):
        return np.array(_nested(x, "grad"), dtype=np.float64)
    g = getattr(x, "grad", None)
    return None if g is None else _array(g)


def _data_of(x: Any) -> np.ndarray:
    if isinstance(x, list) or hasattr(x, "detach"):
        return _array(x)
    return _array(x.data)  # a numpy Parameter


def activation_layers(model: Any) -> list[tuple[str, Any, str]]:
    """(name, layer, kind) of each nonlinearity in ``model.layers``: where saturation matters."""
    L = layer_module(model.backend)
    # by type, so a subclass or a backend's alias (torch-module's Tanh is nn.Tanh) still counts
    types = [(getattr(L, name), kind) for name, kind in NONLINEARITIES.items() if hasattr(L, name)]
    found = []
    for i, layer in enumerate(model.layers):
        for cls, kind in types:
            if isinstance(layer, cls):
                found.append((f"layers.{i} ({type(layer).__name__.lower()})", layer, kind))
                break
    return found


def measure(model: Any, X: np.ndarray, Y: np.ndarray, optimizer: Any = None,
            lr: float | None = None) -> tuple[Snapshot, dict[str, float]]:
    """Statistics of one training-mode forward and backward pass on (X, Y).

    Works for every backend: numpy layers record the gradient at their
    output during ``backward``; PyTorch outputs are asked to retain theirs.
    With ``optimizer`` (the run's, from tinylm.optim), the gradients of the
    batch then drive one real ``optimizer.step()`` at learning rate ``lr``
    (default: the optimizer's own), and the update:data ratio of each
    weight matrix is ``update_ratio`` of its weights before and after that
    step: the update the run would make, whatever the optimizer's rule.
    Model and optimizer are left as they were found: arrays, BatchNorm
    running statistics, optimizer state and learning rate are restored and
    the train/eval mode put back, so measuring in the middle of a run does
    not change what the run computes. Returns the snapshot and the ratios
    by parameter name (empty without an optimizer).
    """
    if optimizer is None and lr is not None:
        raise ConfigError("the update:data ratio needs the run's optimizer, not only its learning rate")
    saved, was_training = model.state_dict(), model.training
    # state_dict() gives copies: the step below can neither reach nor change them
    saved_optimizer = optimizer.state_dict() if optimizer is not None else None
    saved_lr = optimizer.lr if optimizer is not None else None
    try:
        model.train()
        _, loss = model.forward(X, Y)
        acts = activation_layers(model)
        for _, layer, _ in acts:
            if hasattr(layer.out, "retain_grad") and layer.out.requires_grad:
                layer.out.retain_grad()
        model.backward()
        outputs = {name: _array(layer.out) for name, layer, _ in acts}
        grads = {}
        for name, layer, _ in acts:
            g = getattr(layer, "out_grad", None)  # numpy layers
            grads[name] = _array(g) if g is not None else _grad_of(layer.out)
        weights = {}
        for name, p in model._named_parameters().items():
            data, grad = _data_of(p), _grad_of(p)
            if data.ndim == 2 and grad is not None:
                weights[name] = (data, grad)
        snap = snapshot_from_arrays(outputs, grads, weights, {n: k for n, _, k in acts})
        ratios = {}
        if optimizer is not None:
            if lr is not None:
                optimizer.lr = lr
            optimizer.step()
            # numpy optimizers put new arrays in .data, torch's write in place: read anew
            params = model._named_parameters()
            ratios = {name: update_ratio(before, _data_of(params[name]))
                      for name, (before, _) in weights.items()}
    finally:
        model.load_state_dict(saved)
        if optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
            optimizer.lr = saved_lr
        model.train(was_training)
    return snap, ratios


def diagnostics_record(step: int, lr: float, snap: Snapshot, ratios: Mapping[str, float]
                       ) -> dict[str, Any]:
    """One line of a run's diagnostics.jsonl (standard JSON: an infinite ratio becomes null)."""
    return _json_safe({"step": step, "lr": lr, **snap.to_record(), "update_ratios": dict(ratios)})


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


INITIAL_LOSS_TOLERANCE = 0.5


def initial_loss_record(measured: float, vocab_size: int) -> dict[str, Any]:
    """The measured loss before training next to ln(vocab_size), with a warning flag.

    A freshly initialised model should predict nearly uniformly, so its loss
    should be close to ln(V); far above it means the last layer starts out
    confidently wrong and the first steps are wasted squashing the logits.
    """
    expected = math.log(vocab_size)
    return {"step": 0, "initial_loss": measured, "expected_initial_loss": expected,
            "initial_loss_warning": bool(abs(measured - expected) > INITIAL_LOSS_TOLERANCE)}


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
#
# Each plot is drawn by a ``*_figure`` function, which returns the matplotlib
# Figure (for a caller that wants to look at it, or test it, before saving),
# and saved by the matching ``plot_*`` function, which returns the PNG's path.

MIN_LINE_POINTS = 3  # fewer points of a series are drawn as markers: no trend was measured


def headless_pyplot():
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


# --- a whole run ----------------------------------------------------------------------

DIAGNOSTICS_FILE = "diagnostics.jsonl"
PLOT_DIR = "diagnostics"
DIAGNOSE_BATCH = 512


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """diagnostics.jsonl records by step; a step measured twice (a resumed run) keeps the last."""
    p = Path(path)
    if not p.is_file():
        return []
    by_step = {int(r["step"]): r for r in read_jsonl(p) if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def update_ratio_series(history: Sequence[Mapping[str, Any]]
                        ) -> tuple[list[int], dict[str, list[float]]]:
    """(steps, name -> log10 update:data per step) from diagnostics records."""
    steps: list[int] = []
    series: dict[str, list[float]] = {}
    for r in history:
        ratios = r.get("update_ratios") or {}
        if not ratios:
            continue
        steps.append(int(r["step"]))
        for name, value in ratios.items():
            series.setdefault(name, []).append(float(value) if value is not None else math.nan)
    return steps, series


def recorder_seed(run_seed: int) -> int:
    """The seed of a run's diagnostics batches: derived from, and never equal to, the run's."""
    seed = (run_seed ^ 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    return seed or 1


class Recorder:
    """Measures a model every ``every`` updates, fed by the trainer's progress records.

    It is a progress callback: the evaluation record of step 0 (before any
    update) and the update record of every step s with (s + 1) % every == 0
    trigger a ``measure`` of the model as it then is, after s + 1 updates.
    The update:data ratios are those of one step of ``optimizer`` (the
    run's own, in its current state) at ``lr_at(s + 1)``, the learning rate
    of the run's next update; without an optimizer only activations and
    gradients are recorded. The batch comes from the train split through
    the recorder's own RNG, and ``measure`` restores everything it touches,
    so a run with diagnostics computes exactly what it computes without
    them. Each measurement is appended to ``path`` (diagnostics.jsonl) and
    returned.
    """

    def __init__(self, model: Any, split: Any, every: int, lr_at: Callable[[int], float],
                 path: str | os.PathLike | None, seed: int, batch_size: int = 32, *,
                 optimizer: Any = None) -> None:
        if every < 1:
            raise ConfigError(f"--diagnose-every must be >= 1, got {every}")
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.lr_at = lr_at  # step -> the learning rate of that update
        self.path = Path(path) if path is not None else None
        self.batches = Batches(split, max(2, min(batch_size or DIAGNOSE_BATCH, len(split))),
                               RNG(seed))

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        step = record.get("step")
        if "loss" in record and (step + 1) % self.every == 0:
            done = step + 1
        elif "val_loss" in record and step == 0:
            done = 0
        else:
            return None
        X, Y = self.batches.next()
        lr = float(self.lr_at(done))
        snap, ratios = measure(self.model, X, Y, self.optimizer,
                               lr if self.optimizer is not None else None)
        out = diagnostics_record(done, lr, snap, ratios)
        if self.path is not None:
            append_jsonl(self.path, out)
        return out


def summary_line(record: Mapping[str, Any]) -> str:
    """One line for a diagnostics record: worst saturation and the update:data range."""
    acts = record.get("activations") or []
    ratios = [v for v in (record.get("update_ratios") or {}).values()
              if v is not None and math.isfinite(v)]
    parts = [f"diagnostics at step {record['step']}:"]
    if acts:
        worst = max(acts, key=lambda a: a["saturation"])
        parts.append(f"saturation up to {worst['saturation']:.1f}% ({worst['name']}),")
        parts.append(f"dead units {sum(a['dead'] for a in acts)},")
    if ratios:
        parts.append(f"log10 update:data {min(ratios):.2f} .. {max(ratios):.2f}")
    return " ".join(parts).rstrip(",")


@dataclass
class Diagnosis:
    """What ``diagnose_run`` measured and wrote."""

    step: int
    snapshot: Snapshot
    update_ratios: dict[str, float]
    history: int  # how many --diagnose-every records the run has
    plots: list[Path]

    def table(self) -> str:
        return format_table(self.snapshot, self.update_ratios)


def diagnose_run(run_dir: str | os.PathLike, plot_dir: str | os.PathLike | None = None,
                 batch_size: int | None = None, seed: int = 42) -> Diagnosis:
    """Measure a trained run on one training batch and write its plots.

    The batch is drawn from the run's own train split (``batch_size``
    examples, default 512) with an RNG of ``seed``. The update:data ratios
    are those of one more step of the run's optimizer, rebuilt from the
    checkpoint with its saved state, at the learning rate of the run's
    next update (of its last, once it is finished). Plots
    go to ``plot_dir`` (default ``run_dir/diagnostics``): activation,
    gradient and weight-gradient histograms, the update:data ratios (over
    training if the run was trained with --diagnose-every, else the final
    ratios alone) and the loss curve from metrics.jsonl.
    """
    run_dir = Path(run_dir)
    run = open_run(run_dir, weights="last")  # the weights its optimizer state and step belong to
    if run.kind != "neural":
        raise ConfigError(f"{str(run_dir)!r} holds an n-gram run: it has no layers to diagnose")
    config = run.config
    if is_sequence(run.model_config):
        raise ConfigError(f"tinylm diagnose is not available for the {run.model_config.model} "
                          "model yet: its statistics are made for layer stacks")
    split = make_split("train", run.lines3[0], run.tokenizer, run.model_config.context, config.loader)
    # a larger batch than training's: smoother histograms, steadier statistics
    B = batch_size or min(len(split), DIAGNOSE_BATCH)
    if B < 2:
        raise ConfigError(f"diagnostics need a batch of at least 2 examples, got {B}")
    X, Y = Batches(split, B, RNG(seed)).next()
    step = run.step
    lr = learning_rate(config, min(step, config.steps - 1))
    optimizer = make_optimizer(run.model, config.optimizer, lr=lr, weight_decay=config.weight_decay)
    try:
        optimizer.load_state_dict(run.arrays["optimizer"])
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"the checkpoint in {str(run_dir)!r} has no optimizer state "
                              f"that fits: {e}") from None
    snap, ratios = measure(run.model, X, Y, optimizer, lr)

    out = Path(plot_dir) if plot_dir is not None else run_dir / PLOT_DIR
    headless_pyplot()  # refuse a missing matplotlib before the plot directory exists
    check_out_dir(out)
    run_name = run_dir.resolve().name  # what the plot titles call the run
    history = read_history(run_dir / DIAGNOSTICS_FILE)
    steps, series = update_ratio_series(history)
    if not steps or steps[-1] != step:
        steps.append(step)
        for name in ratios:
            series.setdefault(name, [math.nan] * (len(steps) - 1)).append(ratios[name])
    # drawn into a scratch directory beside the target and moved in only when all are
    # drawn: a failure half-way (a full disk) leaves no half set of plots behind
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        drawn = [plot_activation_histograms(snap, scratch / "activations.png", step, run_name),
                 plot_gradient_histograms(snap, scratch / "gradients.png", step, run_name),
                 plot_weight_gradient_histograms(snap, scratch / "weight_gradients.png", step,
                                                 run_name),
                 plot_update_ratios(steps, series, scratch / "update_ratios.png", run_name)]
        if loss_series(run.metrics):
            drawn.append(plot_loss_curve(run.metrics, scratch / "loss.png", run=run_name))
        make_out_dir(out)
        plots = []
        for path in drawn:
            os.replace(path, out / path.name)
            plots.append(out / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Diagnosis(step, snap, ratios, len(history), plots)
