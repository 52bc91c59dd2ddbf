"""Training diagnostics of a model: is this deep network healthy, and if not, where?

``measure`` runs one training-mode forward and backward pass of a model and
gathers, through the model's own hooks (``to_numpy``, ``grad_of``,
``keep_output_grad``), the outputs and output gradients of its
nonlinearities and the gradients of its weight matrices, then takes one
step of the run's own optimizer for the update:data ratios, leaving model
and optimizer as they were. The statistics themselves are
tinylm.layer_stats, the pictures tinylm.plotting. ``Recorder`` measures
during training (``--diagnose-every``, into diagnostics.jsonl);
``diagnose_run`` measures a committed run and draws its plots.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tinylm.batches import Batches, make_split
from tinylm.errors import CheckpointError, ConfigError
from tinylm.io import append_jsonl, check_out_dir, make_out_dir, read_jsonl
from tinylm.layer_stats import Snapshot, format_table, snapshot_from_arrays, update_ratio
from tinylm.models import expected_initial_loss, layer_module
from tinylm.optim import make_optimizer
from tinylm.plotting import (headless_pyplot, loss_series, plot_activation_histograms,
                             plot_gradient_histograms, plot_loss_curve, plot_update_ratios,
                             plot_weight_gradient_histograms)
from tinylm.rng import RNG
from tinylm.runs import open_run
from tinylm.train import learning_rate

# The nonlinearities by the name every backend module exports them under (see
# tinylm.layers), with the kind of statistics their outputs get.
NONLINEARITIES = {"Tanh": "tanh", "ReLU": "relu"}


def _float64(x: Any) -> np.ndarray:
    """A float64 copy, what every statistic is computed in (weights read before an
    optimizer step must not follow it)."""
    return np.array(x, dtype=np.float64)


def _grad64(model: Any, x: Any) -> np.ndarray | None:
    """``model.grad_of(x)`` in float64, or None where the backend kept no gradient."""
    g = model.grad_of(x)
    return None if g is None else _float64(g)


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

    Works for every backend: each nonlinearity's output is asked to keep
    its gradient (``model.keep_output_grad``; autograd frees it otherwise)
    and read back with ``model.grad_of``.
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
            model.keep_output_grad(layer)
        model.backward()
        outputs = {name: _float64(model.to_numpy(layer.out)) for name, layer, _ in acts}
        grads = {name: _grad64(model, layer) for name, layer, _ in acts}
        weights = {}
        for name, p in model._named_parameters().items():
            data, grad = _float64(model.to_numpy(p)), _grad64(model, p)
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
            ratios = {name: update_ratio(before, _float64(model.to_numpy(params[name])))
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
    expected = expected_initial_loss(vocab_size)
    return {"step": 0, "initial_loss": measured, "expected_initial_loss": expected,
            "initial_loss_warning": bool(abs(measured - expected) > INITIAL_LOSS_TOLERANCE)}


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
    if run.model.per_position:
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
