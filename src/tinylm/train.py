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
between two updates: every ``checkpoint_every`` steps (or once a minute), at
the end, and on Ctrl-C or SIGTERM, which only raise a flag that the loop
checks before each step; the trainer then saves and raises
``TrainingInterrupted`` (a ``KeyboardInterrupt``). A second signal acts at
once; the store's commits being atomic, a kill at any moment leaves the last
committed checkpoint (tinylm.runs). A loss that stops being finite stops the
run with ``TrainingDiverged``, keeping its last checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from tinylm import devices, distributed, settings
from tinylm.batches import Batches, Split, eval_batches
from tinylm.data import IGNORE, LOADERS
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.models import BACKENDS, TORCH_BACKENDS
from tinylm.layers.numpy_layers import cross_entropy, sequence_cross_entropy
from tinylm.optim import OPTIMIZERS, SCHEDULES, lr_at, make_optimizer
from tinylm.recipes import recipe_names
from tinylm.rng import RNG
from tinylm.sample import eval_mode, logits_array
from tinylm.text import FORMATS, TextSplit, units
from tinylm.settings import (
    ALL_OR_POSITIVE, FRACTION, NONNEG_FLOAT, NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, TEXT, choice,
    optional, setting,
)

# a lines run's train loss by default: all of the split up to this many targets, else its first
# batches that hold this many (the split is shuffled: a fixed sample)
TRAIN_EVAL_TARGETS = 262_144
# which weights a run keeps: after its last step, or at its lowest val loss
KEEP = ("last", "best")
DEVICE = settings.Kind(str, devices.is_device_name, devices.DEVICE_FORMS, metavar="DEVICE")


@dataclass(frozen=True)
class TrainConfig(settings.Settings):
    """How a neural model is trained: every setting that decides what a run computes.

    Each field is a setting (see tinylm.settings): its default, check, help
    line and the models that read it are declared here once; the
    ``tinylm train`` flags are made from them. ``resume=True`` marks what
    ``--resume`` may change.
    """

    backend: str = setting("numpy", "implementation of the model", choice(BACKENDS))
    format: str = setting("lines", "lines: the file is a list of items, one per line (stripped, "
                          "blank lines dropped); text: one continuous document kept character "
                          "for character (tabs, indentation, blank lines), split contiguously "
                          "into the first 90%%, the next 5%% and the last 5%% at line ends",
                          choice(FORMATS), models=None)
    loader: str = setting("words", "--format lines only: words: each line an independent item; "
                          "stream: the lines joined into one text, the protocol of the classic "
                          "reference figures", choice(LOADERS), models=None)
    seed: int = setting(42, "seed of the run's RNG (initialisation, batches, sampling)", SEED,
                        models=None)
    batch_size: int = setting(32, "examples per step, 0 = the whole train split", NONNEG_INT)
    steps: int = setting(5000, "optimizer steps (on --resume: the step to continue to)",
                         POSITIVE_INT, resume=True)
    optimizer: str = setting("adamw", "the optimizer", choice(OPTIMIZERS))
    lr: float = setting(1e-2, "(peak) learning rate", POSITIVE_FLOAT)
    beta2: float = setting(0.999, "AdamW's decay of its squared-gradient average (its "
                           "gradient average decays by 0.9)", FRACTION)
    lr_schedule: str = setting("cosine", "learning-rate schedule: constant; cosine to 0; step: "
                               "x0.1 after 75%% of the steps", choice(SCHEDULES))
    warmup: int = setting(0, "steps over which the learning rate climbs linearly to --lr before "
                          "the schedule begins (0: none)", NONNEG_INT)
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW) or L2 term (SGD)",
                                  NONNEG_FLOAT)
    eval_every: int = setting(500, "evaluate every this many steps and at the last", POSITIVE_INT)
    keep: str = setting("last", "the weights the run keeps for its test loss, its samples and "
                        "'tinylm sample/eval': last (after the final step) or best (those an "
                        "evaluation with the lowest val loss measured, each evaluation coming "
                        "before its step's update: early stopping without stopping)",
                        choice(KEEP))
    eval_train_batches: int | None = setting(
        None, "--format lines: batches of the train split to estimate its loss on (default: "
        f"all of it up to {TRAIN_EVAL_TARGETS:,} targets, else its first batches that hold "
        "that many, a fixed sample since the lines are shuffled; 0: all)", ALL_OR_POSITIVE)
    eval_tokens: int = setting(32_768, "--format text: a split of at most this many characters "
                               "is scored whole, each character once; a larger one (train, "
                               "usually) is estimated from a fixed sample of about this many, "
                               "with its standard error", POSITIVE_INT, resume=True)
    sample_prompt: str = setting("\n", "prompt of sample.txt", TEXT)
    sample_tokens: int = setting(0, "write sample.txt: this many tokens after the prompt "
                                 "(0: none)", NONNEG_INT)
    sample_seed: int = setting(42, "seed of the samples printed and saved after training", SEED)
    checkpoint_every: int = setting(0, "commit a checkpoint every N steps (0: at least once a "
                                    "minute); a kill loses no more than that", NONNEG_INT,
                                    resume=True)
    threads: int = setting(0, "threads for BLAS and PyTorch (0: one, unless OMP_NUM_THREADS or "
                           "the like is set; more threads thrash on a busy machine); the run "
                           "saves the count and a resume keeps it, since BLAS rounds "
                           "differently with another", NONNEG_INT, resume=True)
    device: str = setting("auto", "where a torch backend computes: auto (CUDA if present, else "
                          "the CPU), cpu, cuda, cuda:N or mps; checkpoints load on any device",
                          DEVICE, resume=True)
    dtype: str = setting("float32", "precision of the forward pass: float32 (every backend's "
                         "numbers equal), or bfloat16/float16 under torch.autocast (torch "
                         "backends; float16 with a loss scale)", choice(devices.DTYPES))
    grad_accum: int = setting(1, "split each batch into this many micro-batches whose "
                              "gradients add up before the update: the same step in less "
                              "memory (torch backends; may change on resume, to rounding)",
                              POSITIVE_INT, resume=True)
    diagnose_every: int = setting(0, "every N steps measure activation, gradient and update:data "
                                  "statistics into diagnostics.jsonl, for 'tinylm diagnose' "
                                  "(0: never); the run's numbers do not change", NONNEG_INT,
                                  resume=True)
    recipe: str | None = setting(None, "a published protocol; explicit flags override its "
                                 "settings (list them: tinylm recipes)",
                                 optional(choice(recipe_names), "a recipe name"))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training; ``saved``: whether a checkpoint holds the run's state."""

    def __init__(self, step: int, saved: bool, signum: int = signal.SIGINT) -> None:
        super().__init__(step, saved, signum)
        self.step = step
        self.saved = saved
        self.signum = signum


class TrainingDiverged(TinylmError):
    """The loss stopped being a finite number: the run stops, its last checkpoint kept."""


@dataclass
class TrainResult:
    steps: int
    metrics: list[dict]
    seconds: float
    resumed_from: int = 0

    def last(self, key: str) -> float | None:
        """The value of ``key`` in the last record that has it."""
        for record in reversed(self.metrics):
            if key in record:
                return record[key]
        return None


def perplexity(loss: float) -> float | None:
    """exp(loss), or None where it would overflow (a loss over 709 nats)."""
    return math.exp(loss) if loss < 709 else None


# --- backend-neutral helpers ---------------------------------------------------------

def loss_value(loss) -> float:
    """A model's loss as a Python float (numpy float, torch scalar, or micrograd Value)."""
    if hasattr(loss, "item"):
        return float(loss.item())
    if hasattr(loss, "data") and not isinstance(loss, np.ndarray):
        return float(loss.data)
    return float(loss)


def learning_rate(config: TrainConfig, step: int) -> float:
    return float(lr_at(step, config.steps, config.lr, config.lr_schedule, warmup=config.warmup))


def train_batches(config: TrainConfig, split: Split) -> int | None:
    """How many batches of a lines run's train split its train loss is measured on: those
    ``eval_train_batches`` says (0: all), by default all up to ``TRAIN_EVAL_TARGETS``
    targets, else the first batches that hold that many. None: all of them."""
    if config.eval_train_batches is not None:
        return config.eval_train_batches or None
    if isinstance(split, TextSplit) or split.n_tokens <= TRAIN_EVAL_TARGETS:
        return None
    batch = config.batch_size or len(split)
    per_example = split.n_tokens / len(split)  # targets a row or window scores, on average
    return max(1, math.ceil(TRAIN_EVAL_TARGETS / (per_example * batch)))


def evaluate(model, split: Split, batch_size: int, max_batches: int | None = None,
             world: distributed.World = distributed.World()) -> float:
    """The loss of ``model`` on ``split`` by the split's evaluation protocol (eval mode).

    This is the data's negative log-likelihood per token: weight penalties
    (the bigram's) belong to the training objective and are left out, so
    every model is judged on the same number as the count models. Of several
    processes each computes every ``world.size``-th chunk, and the sums are
    added up over the processes.
    """
    total, weight = 0.0, 0
    with eval_mode(model):
        for i, (X, Y, w) in enumerate(eval_batches(split, batch_size, max_batches)):
            if i % world.size != world.rank:
                continue
            logits, _ = model.forward(X)
            loss = sequence_cross_entropy if split.per_position else cross_entropy
            total += w * loss(logits_array(logits), Y)
            weight += w
    if world.distributed:
        total, weight = distributed.all_sum([total, weight])
    return total / weight


# Positions (and logits) an evaluation of a text computes at a time: bounds its memory, and how
# long a signal waits for the evaluation to notice it.
TEXT_EVAL_POSITIONS = 8192
TEXT_EVAL_LOGITS = 1 << 22


@dataclass(frozen=True)
class Measured:
    """A loss measured on a text split: exact, or estimated with its standard error ``se``."""

    loss: float
    se: float | None
    targets: int  # characters scored


def measure(model, split: TextSplit, budget: int, seed: int,
            world: distributed.World = distributed.World(),
            stop: Callable[[], bool] | None = None) -> Measured:
    """The loss of ``model`` on a text split in nats per character (``tinylm.text.units``):
    every target once if the split fits ``budget``, else an estimate from a fixed sample of
    units with its standard error. ``stop()`` is asked between chunks; True raises
    ``KeyboardInterrupt`` (a signal during an evaluation is answered within a chunk)."""
    plan = units(split, budget, seed)
    # positions a unit computes: its window, or (a fixed-window model) one per scored target
    per_unit = min(split.block_size, split.n_tokens) if split.per_position else \
        int(plan.scored.max())
    positions = min(TEXT_EVAL_POSITIONS, max(1, TEXT_EVAL_LOGITS // model.config.vocab_size))
    chunk = max(1, positions // per_unit)
    sums = np.zeros(len(plan))  # (U,) each unit's summed negative log-likelihood
    with eval_mode(model):
        for c, lo in enumerate(range(0, len(plan), chunk)):
            if c % world.size != world.rank:
                continue
            if stop is not None and not world.distributed and stop():
                raise KeyboardInterrupt
            hi = lo + chunk
            scored = plan.scored[lo:hi]
            X, Y = split.windows(plan.ends[lo:hi], scored)
            logits, _ = model.forward(X)
            nll = _token_nll(logits_array(logits), Y)  # (U, T) or (sum(scored),)
            if split.per_position:
                sums[lo:hi] = nll.sum(axis=1)
            else:
                sums[lo:hi] = np.add.reduceat(nll, np.cumsum(scored) - scored)
    if world.distributed:
        sums = np.array(distributed.all_sum(sums.tolist()))
    loss = float(sums.sum() / plan.scored.sum())
    se = None
    if not plan.exact:
        means = sums / plan.scored  # (U,)
        se = float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.inf
    return Measured(loss, se, int(plan.scored.sum()))


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] in float64 for every target, 0 where it is IGNORE."""
    z = logits.astype(np.float64)  # (..., V)
    top = z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(z, np.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return np.where(targets == IGNORE, 0.0, log_norm - picked)


def _check_parts(config: TrainConfig, model, world: distributed.World, n_train: int) -> None:
    """Refuse a batch in parts where the parts would not add up to the whole batch's step."""
    why = "several processes" if world.distributed else f"--grad-accum {config.grad_accum}"
    if getattr(model, "backend", "") not in TORCH_BACKENDS:
        raise ConfigError(f"{why} needs a torch backend (--backend torch or torch-module): "
                          f"the {model.backend} backend computes a batch whole")
    if getattr(model, "batch_statistics", False):
        raise ConfigError(f"{why}: a model with BatchNorm1d normalises by its batch's "
                          "statistics, which a part of the batch does not have")
    if getattr(model.config, "dropout", 0.0) > 0:
        raise ConfigError(f"{why}: --dropout draws its masks for the whole batch in one "
                          "process; training in parts with dropout is not available yet")
    distributed.parts(config.batch_size or n_train, world, config.grad_accum)


def place(model, config: TrainConfig, world: distributed.World = distributed.World()) -> str:
    """Put a torch model on the run's device, in its precision; returns the device.

    ``ConfigError`` for a device this machine lacks or a precision the backend cannot run.
    """
    backend = getattr(model, "backend", "numpy")
    device = distributed.device_of(world, devices.resolve(config.device, backend))
    devices.check_dtype(config.dtype, backend, device)
    if backend in TORCH_BACKENDS:
        if model.device != device:
            model.to_device(device)
        model.dtype = config.dtype
    return device


def _scalar(value: float, device: str):
    import torch

    return torch.tensor(value, dtype=torch.float32, device=device)


# --- the trainer ---------------------------------------------------------------------

@dataclass
class Best:
    """The evaluation with the lowest val loss so far, and the weights it measured."""

    step: int
    val_loss: float
    weights: dict[str, np.ndarray]


@dataclass
class TrainState:
    """What changes as a run goes: the next step to run, the loader position, the records."""

    step: int = 0
    position: int = 0
    metrics: list[dict] = field(default_factory=list)


_KEY_ORDER = ("step", "loss", "lr", "train_loss", "val_loss", "test_loss", "test_perplexity",
              "best_step", "best_val_loss")

# Without --checkpoint-every, a checkpoint at least this often: a kill loses at most this much.
CHECKPOINT_SECONDS = 60.0


def _ordered(record: dict) -> dict:
    """One key order for a record, whether just made or read back from sorted JSON."""
    keys = [k for k in _KEY_ORDER if k in record] + sorted(k for k in record if k not in _KEY_ORDER)
    return {k: record[k] for k in keys}


class Trainer:
    """Runs ``config`` on ``model`` over ``splits`` ("train", "val", "test").

    The optimizer is the one ``config`` names, for the model's backend
    (``self.optimizer``, see tinylm.optim.make_optimizer). ``rng`` draws the
    words-loader batches (it has usually just initialised the model).
    ``store`` is where the run is kept (a ``tinylm.runs.RunWriter``: it logs
    metrics records and commits checkpoints atomically); with None nothing
    is written, which is what benchmarks and most tests want.
    """

    def __init__(self, config: TrainConfig, model, splits: dict[str, Split], rng: RNG, *,
                 store: Any = None, progress: Callable[[dict], None] | None = None,
                 world: distributed.World = distributed.World()) -> None:
        for name in ("train", "val", "test"):
            if name not in splits:
                raise ConfigError(f"the trainer needs a {name} split")
        if config.batch_size > len(splits["train"]):
            # drawn with replacement it would run, but each step would cost more than an
            # epoch of the whole split; refused before anything is written
            raise ConfigError(f"--batch-size {config.batch_size} is larger than the train split "
                              f"({len(splits['train']):,} examples); use --batch-size 0 to train "
                              "on the whole split in every step")
        if config.batch_size == 1 and getattr(model, "batch_statistics", False):
            # refused here, before a run directory is written, not at the first update
            raise ConfigError("batch_size 1 cannot train a model with BatchNorm1d: "
                              "a batch needs at least 2 examples to have a variance")
        learning_rate(config, 0)  # a schedule that does not fit the steps is refused here too
        self.world = world
        # a batch computed in parts: over several processes, or in micro-batches
        self._in_parts = world.distributed or config.grad_accum > 1
        if self._in_parts:
            _check_parts(config, model, world, len(splits["train"]))
        place(model, config, world)  # before the optimizer makes its state beside the weights
        self.config = config
        self.model = model
        model.draw_dropout_from(rng)  # masks from the run's RNG: its checkpointed state resumes them
        self.optimizer = make_optimizer(model, config.optimizer, lr=config.lr,
                                        weight_decay=config.weight_decay,
                                        betas=(0.9, config.beta2))
        self.splits = splits
        self.rng = rng
        self.store = store
        self.progress = progress
        self.state = TrainState()
        self._signal: int | None = None
        self._stop_agreed = False  # several processes: all of them know that one was stopped
        self._saved_at = time.monotonic()
        self._saved_step: int | None = None  # the step of the last checkpoint this trainer took
        self.best: Best | None = None  # with keep "best": the evaluation with the lowest val loss
        self.scaler = devices.grad_scaler(getattr(model, "device", "cpu"), config.dtype)

    # --- checkpoints ---

    def save(self) -> None:
        """Commit the run as it is between two updates (an atomic switch in the store)."""
        if self.store is None:
            raise ConfigError("this trainer has no run directory to save into")
        state = {"step": self.state.step, "rng_state": str(self.rng.get_state()),
                 "loader_position": self.state.position}
        arrays = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.best is not None:  # the last weights resume the run; the best are what it keeps
            state["best"] = {"step": self.best.step, "val_loss": self.best.val_loss}
            arrays["best"] = self.best.weights
        if self.scaler is not None:  # float16's loss scale moves as the run goes
            state["grad_scaler"] = self.scaler.state_dict()
        if not all(np.isfinite(a).all() for a in arrays["model"].values()):
            raise TrainingDiverged(f"the weights stopped being finite numbers by step "
                                   f"{self.state.step}: the learning rate ({self.optimizer.lr:g}) "
                                   "is probably too large; the run keeps its last checkpoint")
        self.store.commit(state, arrays)
        self._saved_at = time.monotonic()
        self._saved_step = self.state.step

    def restore(self, state: dict, arrays: dict, metrics: list[dict]) -> None:
        """Continue from a committed checkpoint: its ``state``, ``arrays`` and ``metrics``."""
        try:
            step = int(state["step"])
            rng_state = int(state["rng_state"])
            position = int(state["loader_position"])
            model_state, optim_state = arrays["model"], arrays["optimizer"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint lacks the training state needed to resume") from None
        self.model.load_state_dict(model_state)  # CheckpointError on any name or shape mismatch
        try:
            self.optimizer.load_state_dict(optim_state)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit: {e}") from None
        try:
            self.rng.set_state(rng_state)
        except ValueError:
            raise CheckpointError(f"the checkpoint's RNG state {rng_state} is invalid") from None
        if not 0 <= step <= self.config.steps:
            raise CheckpointError(f"the checkpoint's step {step} is outside the run's 0..{self.config.steps}")
        metrics = [_ordered(r) for r in metrics]
        if step < self.config.steps:
            # a finished run being extended: its test record belongs to the old end
            while metrics and "test_loss" in metrics[-1]:
                metrics.pop()
        self.state = TrainState(step=step, position=position, metrics=metrics)
        if self.scaler is not None and "grad_scaler" in state:
            try:
                self.scaler.load_state_dict(state["grad_scaler"])
            except (KeyError, TypeError, ValueError, RuntimeError):
                raise CheckpointError("the checkpoint's float16 loss scale is invalid") from None
        self.best = None
        if "best" in state:
            try:
                self.best = Best(int(state["best"]["step"]), float(state["best"]["val_loss"]),
                                 dict(arrays["best"]))
            except (KeyError, TypeError, ValueError):
                raise CheckpointError("the checkpoint's best weights are incomplete") from None
            shapes = {name: a.shape for name, a in self.model.state_dict().items()}
            if {name: np.shape(a) for name, a in self.best.weights.items()} != shapes:
                raise CheckpointError("the checkpoint's best weights do not fit the model")

    # --- the loop ---

    def _record(self, record: dict, log: bool = True) -> None:
        record = _ordered(record)
        self.state.metrics.append(record)
        if self.store is not None and log:
            self.store.log(record)
        if self.progress is not None:
            self.progress(record)

    def _update(self, batches: Batches, step: int) -> float:
        X, Y = batches.next()
        self.model.train()
        if self._in_parts or self.scaler is not None:
            return self._update_in_parts(X, Y, step)
        _, loss = self.model.forward(X, Y)
        value = loss_value(loss)
        self._check_loss(value, step)
        self.model.backward()  # every backend's backward sets fresh gradients: nothing to zero
        self.optimizer.step()
        return value

    def _update_in_parts(self, X: np.ndarray, Y: np.ndarray, step: int) -> float:
        """One update from this process's parts of the batch (tinylm.distributed): each
        part's mean loss weighted by its share of the batch's scored targets, the gradients
        added up over the parts and the processes, then the step (float16: unscaled first,
        and skipped if they overflowed)."""
        scored = (Y != IGNORE).reshape(len(Y), -1).sum(axis=1)  # (B,) targets each row scores
        total = int(scored.sum())
        value = 0.0
        for i, rows in enumerate(distributed.parts(len(Y), self.world, self.config.grad_accum)):
            _, loss = self.model.forward(X[rows], Y[rows])
            share = int(scored[rows].sum()) / total
            value += share * loss_value(loss)
            scale = share if self.scaler is None else self.scaler.scale(
                _scalar(share, self.model.device))
            self.model.backward(scale=scale, accumulate=i > 0)
        if self.world.distributed:  # the loss and the stop flag travel with the gradients
            value, stops = distributed.all_reduce_grads(
                self.model.parameters(), [value, float(self._signal is not None)])
            self._stop_agreed = self._stop_agreed or stops > 0
        self._check_loss(value, step)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return value

    def _check_loss(self, value: float, step: int) -> None:
        if not math.isfinite(value):
            # the weights are still the last finite ones, but the run is lost from here on
            raise TrainingDiverged(
                f"the training loss became {value} at step {step}: the learning rate "
                f"({self.optimizer.lr:g}) is probably too large; the run keeps its last checkpoint")

    def _evaluate(self, step: int, split: str, batch_size: int, limit: int | None = None
                  ) -> tuple[float, dict]:
        """The loss on ``split``, and for an estimate on a text its standard error as
        ``{"<split>_loss_se": se}`` for the record."""
        data, extra = self.splits[split], {}
        if isinstance(data, TextSplit):
            measured = measure(self.model, data, self.config.eval_tokens, self.config.seed,
                               self.world, stop=lambda: self._signal is not None)
            value = measured.loss
            if measured.se is not None:
                extra[f"{split}_loss_se"] = measured.se
        else:
            value = evaluate(self.model, data, batch_size, limit, self.world)
        if not math.isfinite(value):
            raise TrainingDiverged(f"the {split} loss became {value} at step {step}; the run "
                                   "keeps its last checkpoint")
        return value, extra

    def _checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        if every:
            return step % every == 0
        return time.monotonic() - self._saved_at >= CHECKPOINT_SECONDS

    def run(self) -> TrainResult:
        """Train from the current state to ``config.steps``; then test. Returns the result."""
        cfg, state = self.config, self.state
        start, t0 = state.step, time.perf_counter()
        batches = Batches(self.splits["train"], cfg.batch_size, self.rng, state.position)
        eval_bs = cfg.batch_size or len(self.splits["train"])
        # overflow on the way to a divergence is caught as a non-finite loss, not warned about
        with self._deferred_signals(), np.errstate(over="ignore", invalid="ignore"):
            updating = False
            try:
                for step in range(state.step, cfg.steps):
                    # a step after an update goes by what that update's all-reduce agreed on
                    self._check_signal(agree=step == start)
                    if self.store is not None and step > start and self._checkpoint_due(step):
                        self.save()
                    lr = learning_rate(cfg, step)
                    self.optimizer.lr = lr
                    evaluation = None
                    if step % cfg.eval_every == 0 or step == cfg.steps - 1:
                        train_loss, train_se = self._evaluate(
                            step, "train", eval_bs, train_batches(cfg, self.splits["train"]))
                        val_loss, val_se = self._evaluate(step, "val", eval_bs)
                        evaluation = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
                                      **train_se, **val_se}
                        if cfg.keep == "best" and (self.best is None or val_loss < self.best.val_loss):
                            self.best = Best(step, val_loss, self.model.state_dict())
                        # logged with the update it precedes: a checkpoint never holds an
                        # evaluation of a step it has not taken
                        self._record(evaluation, log=False)
                        self._check_signal()
                    updating = True
                    loss = self._update(batches, step)
                    state.step, state.position = step + 1, batches.position
                    updating = False
                    if evaluation is not None and self.store is not None:
                        self.store.log(_ordered(evaluation))
                        self.store.flush()  # evaluations reach the file at once, updates in bulk
                    self._record({"step": step, "loss": loss, "lr": lr})
                if not state.metrics or "test_loss" not in state.metrics[-1]:
                    record = self._test(eval_bs)
                    self._check_signal()
                    self._record(record)
                if self.store is not None:
                    self.save()
            except TrainingDiverged:
                if self.store is not None and self._saved_step == state.step:
                    # the checkpoint just taken holds the very weights whose loss is not
                    # finite: the run keeps the one before, whose step went through
                    self.store.revert()
                raise
            except KeyboardInterrupt:
                signum = self._signal or signal.SIGINT
                if updating or self.store is None:
                    # stopped inside an update: the arrays are half-stepped, nothing to save
                    raise TrainingInterrupted(state.step, False, signum) from None
                if state.metrics and "val_loss" in state.metrics[-1] \
                        and state.metrics[-1]["step"] == state.step:
                    state.metrics.pop()  # an evaluation of a step that did not happen
                self.save()
                raise TrainingInterrupted(state.step, True, signum) from None
        return TrainResult(cfg.steps, state.metrics, time.perf_counter() - t0, start)

    def _test(self, batch_size: int) -> dict:
        """The test record, measured once, at the end, on the weights the run keeps."""
        steps = self.config.steps
        if self.best is None:
            loss, se = self._evaluate(steps, "test", batch_size)
            return {"step": steps, "test_loss": loss, "test_perplexity": perplexity(loss), **se}
        last = self.model.state_dict()
        self.model.load_state_dict(self.best.weights)
        try:
            loss, se = self._evaluate(steps, "test", batch_size)
        finally:
            self.model.load_state_dict(last)  # the checkpoint must resume from the last step
        return {"step": steps, "test_loss": loss, "test_perplexity": perplexity(loss), **se,
                "best_step": self.best.step, "best_val_loss": self.best.val_loss}

    def keep_weights(self) -> None:
        """Load the weights the run keeps into the model (the best by val, with keep "best")."""
        if self.best is not None:
            self.model.load_state_dict(self.best.weights)

    def _check_signal(self, agree: bool = True) -> None:
        """Raise KeyboardInterrupt if the run was asked to stop.

        Of several processes, all stop before the same step or none does: a signal counts
        once the processes have agreed on it, here (``agree``, a collective) or in the last
        update's all-reduce, which carries every process's flag."""
        stop = self._signal is not None
        if self.world.distributed:
            if agree:
                self._stop_agreed = distributed.any_process(stop) or self._stop_agreed
            stop = self._stop_agreed
            if stop and self._signal is None:
                self._signal = signal.SIGTERM  # another process was stopped
        if stop:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _deferred_signals(self) -> Iterator[None]:
        """Turn the first SIGINT or SIGTERM into a flag the loop checks between updates.

        The handlers stay in place until the final checkpoint is committed; a
        second signal of the same kind then acts at once (Ctrl-C raises
        KeyboardInterrupt, SIGTERM ends the process), and the commits being
        atomic, the directory keeps its last complete state either way.
        """
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            self._signal = signum
            signal.signal(signum, previous[signum])

        for signum in previous:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
