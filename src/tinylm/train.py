"""The one trainer: every model, every backend, one loop.

Step ``s`` of a run of ``steps`` steps is, in this order:

1. set the learning rate from the schedule at index ``s``;
2. if ``s`` is a multiple of ``eval_every`` or the last step, evaluate (before
   the update): train loss over the first ``eval_train_batches`` batches of a
   fresh pass (all of them if None), val loss over the whole val split;
3. take the next batch, forward, backward, optimizer step.

After the last step the test loss is measured. Every result is a record in
``metrics``: ``{"step", "loss", "lr"}`` for each update, ``{"step",
"train_loss", "val_loss"}`` for each evaluation, and a final ``{"step",
"test_loss", "test_perplexity"}``. Records go to the ``progress`` callback as
they are made (the CLI prints them) and, with an out-dir, to metrics.jsonl.

Resuming is bit-identical because a checkpoint holds everything the loop
reads: model arrays, optimizer state with its step count, the RNG state, the
loader position and the metrics so far. Checkpoints are only ever taken
between two updates: a Ctrl-C (SIGINT) only raises a flag that the loop
checks before each step, then the trainer saves and raises
``TrainingInterrupted`` (a ``KeyboardInterrupt``). A second Ctrl-C aborts at
once, without a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tinylm import settings
from tinylm.batches import Batches, Split, eval_batches
from tinylm.checkpoint import save_checkpoint
from tinylm.data import LOADERS
from tinylm.errors import CheckpointError, ConfigError
from tinylm.io import write_jsonl
from tinylm.models import BACKENDS
from tinylm.layers.numpy_layers import cross_entropy
from tinylm.optim import OPTIMIZERS, SCHEDULES, lr_at, make_optimizer
from tinylm.recipes import recipe_names
from tinylm.rng import RNG
from tinylm.sample import eval_mode, logits_array
from tinylm.settings import (
    ALL_OR_POSITIVE, NONNEG_FLOAT, NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, TEXT, choice,
    optional, setting,
)

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """How a neural model is trained: every setting that decides what a run computes.

    Each field is a setting (see tinylm.settings): its default, check, help
    line and the models that read it are declared here once; the
    ``tinylm train`` flags are made from them. ``resume=True`` marks what
    ``--resume`` may change.
    """

    backend: str = setting("numpy", "implementation of the model", choice(BACKENDS))
    loader: str = setting("words", "words: each line an independent item; stream: one continuous "
                          "text, the protocol of the classic reference figures", choice(LOADERS),
                          models=None)
    seed: int = setting(42, "seed of the run's RNG (initialisation, batches, sampling)", SEED,
                        models=None)
    batch_size: int = setting(32, "examples per step, 0 = the whole train split", NONNEG_INT)
    steps: int = setting(5000, "optimizer steps (on --resume: the step to continue to)",
                         POSITIVE_INT, resume=True)
    optimizer: str = setting("adamw", "the optimizer", choice(OPTIMIZERS))
    lr: float = setting(1e-2, "(peak) learning rate", POSITIVE_FLOAT)
    lr_schedule: str = setting("cosine", "learning-rate schedule: constant; cosine to 0; step: "
                               "x0.1 after 75%% of the steps", choice(SCHEDULES))
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW) or L2 term (SGD)",
                                  NONNEG_FLOAT)
    eval_every: int = setting(500, "evaluate every this many steps and at the last", POSITIVE_INT)
    eval_train_batches: int | None = setting(
        None, "batches of the train split to estimate its loss on, 0 = all", ALL_OR_POSITIVE)
    sample_prompt: str = setting("\n", "prompt of sample.txt", TEXT)
    sample_tokens: int = setting(0, "write sample.txt: this many tokens after the prompt "
                                 "(0: none)", NONNEG_INT)
    sample_seed: int = setting(42, "seed of the samples printed and saved after training", SEED)
    diagnose_every: int = setting(0, "every N steps measure activation, gradient and update:data "
                                  "statistics into diagnostics.jsonl, for 'tinylm diagnose' "
                                  "(0: never); the run's numbers do not change", NONNEG_INT,
                                  resume=True)
    recipe: str | None = setting(None, "a published protocol; explicit flags override its "
                                 "settings (list them: tinylm recipes)",
                                 optional(choice(recipe_names), "a recipe name"))

    def __post_init__(self) -> None:
        settings.check(self)

    def to_dict(self) -> dict[str, Any]:
        return settings.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return settings.from_dict(cls, d)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``checkpoint`` is where the run was saved (None: not saved)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step, checkpoint)
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    steps: int
    metrics: list[dict]
    seconds: float
    checkpoint: Path | None = None
    resumed_from: int = 0

    def last(self, key: str) -> float | None:
        """The value of ``key`` in the last record that has it."""
        for record in reversed(self.metrics):
            if key in record:
                return record[key]
        return None


# --- backend-neutral helpers ---------------------------------------------------------

def loss_value(loss) -> float:
    """A model's loss as a Python float (numpy float, torch scalar, or micrograd Value)."""
    if hasattr(loss, "item"):
        return float(loss.item())
    if hasattr(loss, "data") and not isinstance(loss, np.ndarray):
        return float(loss.data)
    return float(loss)


def learning_rate(config: TrainConfig, step: int) -> float:
    return float(lr_at(step, config.steps, config.lr, config.lr_schedule))


def evaluate(model, split: Split, batch_size: int, max_batches: int | None = None) -> float:
    """The loss of ``model`` on ``split`` by the split's evaluation protocol (eval mode).

    This is the data's negative log-likelihood per token: weight penalties
    (the bigram's) belong to the training objective and are left out, so
    every model is judged on the same number as the count models.
    """
    total, weight = 0.0, 0
    with eval_mode(model):
        for X, Y, w in eval_batches(split, batch_size, max_batches):
            logits, _ = model.forward(X)
            total += w * cross_entropy(logits_array(logits), Y)
            weight += w
    return total / weight


# --- the trainer ---------------------------------------------------------------------

@dataclass
class TrainState:
    """What changes as a run goes: the next step to run, the loader position, the records."""

    step: int = 0
    position: int = 0
    metrics: list[dict] = field(default_factory=list)


_KEY_ORDER = ("step", "loss", "lr", "train_loss", "val_loss", "test_loss", "test_perplexity")


def _ordered(record: dict) -> dict:
    """One key order for a record, whether just made or read back from sorted JSON."""
    keys = [k for k in _KEY_ORDER if k in record] + sorted(k for k in record if k not in _KEY_ORDER)
    return {k: record[k] for k in keys}


class Trainer:
    """Runs ``config`` on ``model`` over ``splits`` ("train", "val", "test").

    The optimizer is the one ``config`` names, for the model's backend
    (``self.optimizer``, see tinylm.optim.make_optimizer). ``rng`` draws the words-loader batches (it has usually just initialised
    the model). ``run_meta`` is stored as is in every checkpoint (the model
    config and vocabulary live there). With ``out_dir`` None nothing is
    written, which is what benchmarks and most tests want.
    """

    def __init__(self, config: TrainConfig, model, splits: dict[str, Split], rng: RNG, *,
                 out_dir: str | Path | None = None, run_meta: dict | None = None,
                 progress: Callable[[dict], None] | None = None) -> None:
        for name in ("train", "val", "test"):
            if name not in splits:
                raise ConfigError(f"the trainer needs a {name} split")
        if config.batch_size == 1 and getattr(model, "batch_statistics", False):
            # refused here, before a run directory is written, not at the first update
            raise ConfigError("batch_size 1 cannot train a model with BatchNorm1d: "
                              "a batch needs at least 2 examples to have a variance")
        self.config = config
        self.model = model
        self.optimizer = make_optimizer(model, config.optimizer, lr=config.lr,
                                        weight_decay=config.weight_decay)
        self.splits = splits
        self.rng = rng
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_meta = run_meta or {}
        self.progress = progress
        self.state = TrainState()
        self._interrupted = False
        self._metrics_file = None

    # --- checkpoints ---

    def save(self) -> Path:
        """Checkpoint the run as it is between two updates."""
        if self.out_dir is None:
            raise ConfigError("this trainer has no out-dir to save into")
        state = self.state
        meta = {
            "run": self.run_meta,
            "train_config": self.config.to_dict(),
            "step": state.step,
            "rng_state": str(self.rng.get_state()),
            "loader_position": state.position,
            "metrics": state.metrics,
        }
        tree = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        path = save_checkpoint(self.out_dir, meta, tree)
        self.close()
        write_jsonl(self.out_dir / METRICS_FILE, state.metrics)
        return path

    def restore(self, meta: dict, tree: dict) -> None:
        """Continue from a checkpoint loaded with ``checkpoint.load_checkpoint``."""
        try:
            step = int(meta["step"])
            rng_state = int(meta["rng_state"])
            position = int(meta["loader_position"])
            metrics = [_ordered(r) for r in meta["metrics"]]
            model_state, optim_state = tree["model"], tree["optimizer"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint lacks the training state needed to resume") from None
        if not isinstance(model_state, dict):
            raise CheckpointError("the checkpoint holds no model arrays")
        self.model.load_state_dict(model_state)  # CheckpointError on any name or shape mismatch
        try:
            self.optimizer.load_state_dict(optim_state)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit: {e}") from None
        try:
            self.rng.set_state(rng_state)
        except ValueError:
            raise CheckpointError(f"the checkpoint's RNG state {rng_state} is invalid") from None
        if step < self.config.steps:
            # a finished run being extended: its test record belongs to the old end
            while metrics and "test_loss" in metrics[-1]:
                metrics.pop()
        self.state = TrainState(step=step, position=position, metrics=metrics)
        if self.out_dir is not None:
            write_jsonl(self.out_dir / METRICS_FILE, metrics)

    # --- the loop ---

    def _record(self, record: dict) -> None:
        record = _ordered(record)
        self.state.metrics.append(record)
        if self._metrics_file is not None:  # open while run() runs with an out-dir
            self._metrics_file.write(json.dumps(record) + "\n")
            if "loss" not in record:  # evaluations reach the file at once, updates in bulk
                self._metrics_file.flush()
        if self.progress is not None:
            self.progress(record)

    def _update(self, batches: Batches) -> float:
        X, Y = batches.next()
        self.model.train()
        _, loss = self.model.forward(X, Y)
        self.model.backward()  # every backend's backward sets fresh gradients: nothing to zero
        self.optimizer.step()
        return loss_value(loss)

    def run(self) -> TrainResult:
        """Train from the current state to ``config.steps``; then test. Returns the result."""
        cfg, state = self.config, self.state
        start, t0 = state.step, time.perf_counter()
        batches = Batches(self.splits["train"], cfg.batch_size, self.rng, state.position)
        eval_bs = cfg.batch_size or len(self.splits["train"])
        committed = len(state.metrics)  # records up to here describe completed updates
        updating = False
        if self.out_dir is not None:
            # one open file for the run: reopening it for every update costs ~0.1 ms a step
            self._metrics_file = open(self.out_dir / METRICS_FILE, "a", encoding="utf-8")
        with self._deferred_interrupts(), contextlib.closing(self):
            try:
                for step in range(state.step, cfg.steps):
                    self._check_interrupt()
                    lr = learning_rate(cfg, step)
                    self.optimizer.lr = lr
                    if step % cfg.eval_every == 0 or step == cfg.steps - 1:
                        train_loss = evaluate(self.model, self.splits["train"], eval_bs,
                                              cfg.eval_train_batches)
                        val_loss = evaluate(self.model, self.splits["val"], eval_bs)
                        self._record({"step": step, "train_loss": train_loss, "val_loss": val_loss})
                        self._check_interrupt()
                    updating = True
                    loss = self._update(batches)
                    state.step, state.position = step + 1, batches.position
                    updating = False
                    committed = len(state.metrics) + 1
                    self._record({"step": step, "loss": loss, "lr": lr})
                if not state.metrics or "test_loss" not in state.metrics[-1]:
                    test_loss = evaluate(self.model, self.splits["test"], eval_bs)
                    self._record({"step": cfg.steps, "test_loss": test_loss,
                                  "test_perplexity": math.exp(test_loss)})
                    self._check_interrupt()
            except KeyboardInterrupt:
                if updating or self.out_dir is None:
                    # stopped inside an update: the arrays are half-stepped, nothing to save
                    raise TrainingInterrupted(state.step, None) from None
                del state.metrics[committed:]  # an evaluation of a step that did not happen
                raise TrainingInterrupted(state.step, self.save()) from None
        path = self.save() if self.out_dir is not None else None
        return TrainResult(cfg.steps, state.metrics, time.perf_counter() - t0, path, start)

    def close(self) -> None:
        """Close the metrics file the loop writes to (``run`` does this itself)."""
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def _check_interrupt(self) -> None:
        if self._interrupted:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _deferred_interrupts(self) -> Iterator[None]:
        """Turn the first SIGINT into a flag the loop checks between updates."""
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self._interrupted = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C aborts at once

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
