"""What a checkpoint of a training run holds, written and read back.

Resuming is bit-identical because a checkpoint holds everything the
training loop reads. The store (tinylm.runs) keeps it as three parts:

* ``state``, JSON in the manifest: ``{"step", "rng_state", "loader_position"}``,
  the RNG state a decimal string (JSON readers without 64-bit integers keep
  it exact), with ``"best": {"step", "val_loss"}`` under ``--keep best`` and
  ``"grad_scaler"`` (float16's loss scale, which moves as a run goes), and
  ``"average": {"updates"}`` under ``--ema``;
* ``arrays``: ``{"model", "optimizer"}`` state dicts, ``"best"``, the
  weights of the best evaluation, under ``--keep best``, and ``"average"``,
  the average of the weights (tinylm.averaging) with the model's buffers,
  under ``--ema``;
* the metrics records so far, which the store logs as they are made.

``Checkpoint.encode`` writes those parts and ``decode`` reads them back,
refusing with a ``CheckpointError`` what a run could not continue from.
Loading the arrays into a model and an optimizer is the trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinylm.errors import CheckpointError

# the key order of a metrics record, whether just made or read back from sorted JSON
KEY_ORDER = ("step", "loss", "lr", "train_loss", "val_loss", "train_bpc", "val_bpc", "test_loss",
             "test_perplexity", "test_bpc", "best_step", "best_val_loss")


def ordered(record: dict) -> dict:
    """One key order for a record, whether just made or read back from sorted JSON."""
    keys = [k for k in KEY_ORDER if k in record] + sorted(k for k in record if k not in KEY_ORDER)
    return {k: record[k] for k in keys}


@dataclass
class Best:
    """The evaluation with the lowest val loss so far, and the weights it measured."""

    step: int
    val_loss: float
    weights: dict[str, np.ndarray]


@dataclass
class Average:
    """The average of the weights over ``updates`` updates (tinylm.averaging), as a full state
    dict: the averaged parameters with the model's buffers."""

    updates: int
    weights: dict[str, np.ndarray]


@dataclass
class TrainState:
    """What changes as a run goes: the next step to run, the loader position, the records."""

    step: int = 0
    position: int = 0
    metrics: list[dict] = field(default_factory=list)


@dataclass
class Checkpoint:
    """A training run between two updates: everything it continues from."""

    state: TrainState
    rng_state: int
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    best: Best | None = None
    grad_scaler: dict | None = None
    average: Average | None = None

    def encode(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest's ``state`` and the ``arrays`` of this checkpoint."""
        state: dict[str, Any] = {"step": self.state.step, "rng_state": str(self.rng_state),
                                 "loader_position": self.state.position}
        arrays: dict[str, Any] = {"model": self.model, "optimizer": self.optimizer}
        if self.best is not None:  # the last weights resume the run; the best are what it keeps
            state["best"] = {"step": self.best.step, "val_loss": self.best.val_loss}
            arrays["best"] = self.best.weights
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler
        if self.average is not None:
            state["average"] = {"updates": self.average.updates}
            arrays["average"] = self.average.weights
        return state, arrays


def decode(state: dict, arrays: dict, metrics: list[dict], steps: int) -> Checkpoint:
    """The checkpoint a store committed, to continue to step ``steps``.

    ``CheckpointError`` for a missing or malformed part, or a step outside
    ``0..steps``. A finished run being extended loses its test record, which
    belongs to the old end.
    """
    try:
        step = int(state["step"])
        rng_state = int(state["rng_state"])
        position = int(state["loader_position"])
        model, optimizer = arrays["model"], arrays["optimizer"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("the checkpoint lacks the training state needed to resume") from None
    if not 0 <= step <= steps:
        raise CheckpointError(f"the checkpoint's step {step} is outside the run's 0..{steps}")
    metrics = [ordered(r) for r in metrics]
    if step < steps:
        while metrics and "test_loss" in metrics[-1]:
            metrics.pop()
    best = None
    if "best" in state:
        try:
            best = Best(int(state["best"]["step"]), float(state["best"]["val_loss"]),
                        dict(arrays["best"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint's best weights are incomplete") from None
    average = None
    if "average" in state:
        try:
            average = Average(int(state["average"]["updates"]), dict(arrays["average"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint's average of the weights is incomplete") from None
    return Checkpoint(TrainState(step, position, metrics), rng_state, model, optimizer, best,
                      state.get("grad_scaler"), average)
