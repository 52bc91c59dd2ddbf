"""The one trainer: every model, every backend, one loop.

Step ``s`` of a run of ``steps`` steps is, in this order:

1. set the learning rate from the schedule at index ``s``;
2. if ``s`` is a multiple of ``eval_every`` or the last step, evaluate (before
   the update): train loss over the first ``eval_train_batches`` batches of a
   fresh pass (all of them if None), val loss over the whole val split;
3. take the next batch, forward, backward, optimizer step.

After the last step the test loss is measured. With ``--ema`` every
evaluation and the test measure the average of the weights over the updates
(tinylm.averaging), which the run keeps, while the weights go on training.
Every result is a record in ``metrics``: ``{"step", "loss", "lr"}`` for
each update, ``{"step", "train_loss", "val_loss"}`` for each evaluation,
and a final ``{"step", "test_loss", "test_perplexity"}``. Records go to the
``progress`` callback as they are made (the CLI prints them) and, with an
out-dir, to metrics.jsonl.

Resuming is bit-identical because a checkpoint holds everything the loop
reads (tinylm.train_state). Checkpoints are only ever taken between two
updates: every ``checkpoint_every`` steps (or once a minute), at the end,
and on Ctrl-C or SIGTERM, which only raise a flag that the loop checks
before each step (tinylm.signals); the trainer then saves and raises
``TrainingInterrupted`` (a ``KeyboardInterrupt``). A second signal acts at
once; the store's commits being atomic, a kill at any moment leaves the last
committed checkpoint (tinylm.runs). A loss that stops being finite stops the
run with ``TrainingDiverged``, keeping its last checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from tinylm import devices, distributed, pytorch
from tinylm.averaging import WeightAverage
from tinylm.batches import Batches, Split, eval_batches
from tinylm.data import IGNORE
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.losses import cross_entropy, perplexity, sequence_cross_entropy, token_nll
from tinylm.layers import TORCH_BACKENDS
from tinylm.optim import lr_at, make_optimizer
from tinylm.rng import RNG
from tinylm.sample import eval_mode
from tinylm.signals import Deferred
from tinylm.text import TextSplit, bits, units
from tinylm.train_config import TRAIN_EVAL_TARGETS, TrainConfig
from tinylm.train_state import Average, Best, Checkpoint, TrainState, decode, ordered


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


# --- backend-neutral helpers ---------------------------------------------------------

def loss_value(loss) -> float:
    """A model's loss as a Python float (numpy float, torch scalar, or micrograd Value)."""
    if hasattr(loss, "item"):
        return float(loss.item())
    if hasattr(loss, "data") and not isinstance(loss, np.ndarray):
        return float(loss.data)
    return float(loss)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` of a run of ``config`` (tinylm.optim.lr_at)."""
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
            total += w * loss(model.to_numpy(logits), Y)
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
    targets: int  # tokens scored


def measure(model, split: TextSplit, budget: int, seed: int,
            world: distributed.World = distributed.World(),
            stop: Callable[[], bool] | None = None) -> Measured:
    """The loss of ``model`` on a text split in nats per token (``tinylm.text.units``):
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
            nll = token_nll(model.to_numpy(logits), Y)  # (U, T) or (sum(scored),)
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


def _check_parts(config: TrainConfig, model, world: distributed.World, n_train: int) -> None:
    """Refuse a batch in parts where the parts would not add up to the whole batch's step."""
    why = "several processes" if world.distributed else f"--grad-accum {config.grad_accum}"
    if model.backend not in TORCH_BACKENDS:
        raise ConfigError(f"{why} needs a torch backend (--backend torch or torch-module): "
                          f"the {model.backend} backend computes a batch whole")
    if model.batch_statistics:
        raise ConfigError(f"{why}: a model with BatchNorm1d normalises by its batch's "
                          "statistics, which a part of the batch does not have")
    distributed.parts(config.batch_size or n_train, world, config.grad_accum)


def place(model, config: TrainConfig, world: distributed.World = distributed.World()) -> str:
    """Put a torch model on the run's device, in its precision, compiled if asked; returns
    the device.

    ``ConfigError`` for a device this machine lacks, a precision the backend cannot run, or
    a compile it cannot do.
    """
    backend = model.backend
    device = distributed.device_of(world, devices.resolve(config.device, backend))
    devices.check_dtype(config.dtype, backend, device)
    if config.compile:
        devices.check_compile(backend, device)
    if backend in TORCH_BACKENDS:
        if model.device != device:
            model.to_device(device)
        model.dtype = config.dtype
        if config.compile:
            model.compile()
    return device


def _scalar(value: float, device: str):
    torch = pytorch.load()

    return torch.tensor(value, dtype=torch.float32, device=device)


# --- the trainer ---------------------------------------------------------------------

# Without --checkpoint-every, a checkpoint at least this often: a kill loses at most this much.
CHECKPOINT_SECONDS = 60.0


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
        if config.batch_size == 1 and model.batch_statistics:
            # refused here, before a run directory is written, not at the first update
            raise ConfigError("batch_size 1 cannot train a model with BatchNorm1d: "
                              "a batch needs at least 2 examples to have a variance")
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
        # with --ema: the average of the weights, which evaluations measure and the run keeps
        self.average = WeightAverage(model, config.ema) if config.ema else None
        self.splits = splits
        self.rng = rng
        self.store = store
        self.progress = progress
        self.state = TrainState()
        self._stop = Deferred(world)  # Ctrl-C and SIGTERM, answered between two updates
        self._updating = False  # inside an update: its arrays are half-stepped
        self._saved_at = time.monotonic()
        self._saved_step: int | None = None  # the step of the last checkpoint this trainer took
        self.best: Best | None = None  # with keep "best": the evaluation with the lowest val loss
        self.scaler = devices.grad_scaler(model.device, config.dtype)

    # --- checkpoints ---

    def save(self) -> None:
        """Commit the run as it is between two updates (an atomic switch in the store)."""
        if self.store is None:
            raise ConfigError("this trainer has no run directory to save into")
        model = self.model.state_dict()
        if not all(np.isfinite(a).all() for a in model.values()):
            raise TrainingDiverged(f"the weights stopped being finite numbers by step "
                                   f"{self.state.step}: the learning rate ({self.optimizer.lr:g}) "
                                   "is probably too large; the run keeps its last checkpoint")
        average = None if self.average is None else Average(
            self.average.updates, self._average_state(model))
        self.store.commit(*Checkpoint(
            self.state, self.rng.get_state(), model, self.optimizer.state_dict(), self.best,
            None if self.scaler is None else self.scaler.state_dict(), average).encode())
        self._saved_at = time.monotonic()
        self._saved_step = self.state.step

    def restore(self, state: dict, arrays: dict, metrics: list[dict]) -> None:
        """Continue from a committed checkpoint: its ``state``, ``arrays`` and ``metrics``."""
        saved = decode(state, arrays, metrics, self.config.steps)
        self.model.load_state_dict(saved.model)  # CheckpointError on any name or shape mismatch
        try:
            self.optimizer.load_state_dict(saved.optimizer)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit: {e}") from None
        try:
            self.rng.set_state(saved.rng_state)
        except ValueError:
            raise CheckpointError(f"the checkpoint's RNG state {saved.rng_state} is invalid") from None
        if self.scaler is not None and saved.grad_scaler is not None:
            try:
                self.scaler.load_state_dict(saved.grad_scaler)
            except (KeyError, TypeError, ValueError, RuntimeError):
                raise CheckpointError("the checkpoint's float16 loss scale is invalid") from None
        if self.average is not None:
            if saved.average is None:
                raise CheckpointError("the checkpoint holds no average of the weights")
            self.average.load_state_dict(saved.average.weights, saved.average.updates)
        if saved.best is not None:
            shapes = {name: a.shape for name, a in self.model.state_dict().items()}
            if {name: np.shape(a) for name, a in saved.best.weights.items()} != shapes:
                raise CheckpointError("the checkpoint's best weights do not fit the model")
        self.state, self.best = saved.state, saved.best

    def _checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        if every:
            return step % every == 0
        return time.monotonic() - self._saved_at >= CHECKPOINT_SECONDS

    # --- the loop ---

    def run(self) -> TrainResult:
        """Train from the current state to ``config.steps``; then test. Returns the result."""
        cfg, state = self.config, self.state
        start, t0 = state.step, time.perf_counter()
        batches = Batches(self.splits["train"], cfg.batch_size, self.rng, state.position)
        eval_bs = cfg.batch_size or len(self.splits["train"])
        # overflow on the way to a divergence is caught as a non-finite loss, not warned about
        with self._stop, np.errstate(over="ignore", invalid="ignore"), self._stopping():
            for step in range(start, cfg.steps):
                # a step after an update goes by what that update's all-reduce agreed on
                self._stop.check(agree=step == start)
                if self.store is not None and step > start and self._checkpoint_due(step):
                    self.save()
                self.optimizer.lr = lr = learning_rate(cfg, step)
                due = step % cfg.eval_every == 0 or step == cfg.steps - 1
                evaluation = self._evaluation(step, eval_bs) if due else None
                self._updating = True
                loss = self._step(*batches.next(), step)
                if self.average is not None:
                    self.average.update()
                state.step, state.position = step + 1, batches.position
                self._updating = False
                if evaluation is not None and self.store is not None:
                    self.store.log(ordered(evaluation))
                    self.store.flush()  # evaluations reach the file at once, updates in bulk
                self._record({"step": step, "loss": loss, "lr": lr})
            if not state.metrics or "test_loss" not in state.metrics[-1]:
                record = self._test(eval_bs)
                self._stop.check()
                self._record(record)
            if self.store is not None:
                self.save()
        return TrainResult(cfg.steps, state.metrics, time.perf_counter() - t0, start)

    def _step(self, X: np.ndarray, Y: np.ndarray, step: int) -> float:
        """One update from the batch ``X, Y``; returns its loss.

        A batch in parts (several processes, ``--grad-accum``, float16's loss
        scale) is this process's parts of it (tinylm.distributed): each
        part's mean loss weighted by its share of the batch's scored targets,
        the gradients added up over the parts and the processes; float16's
        are unscaled before the step, which is skipped if they overflowed.
        Every part starts from the RNG's state at the step's start and draws
        the whole batch's dropout masks, keeping its own rows: the parts drop
        what the whole batch drops, and leave the RNG where it would.
        """
        self.model.train()
        if not (self._in_parts or self.scaler is not None):
            _, loss = self.model.forward(X, Y)
            value = loss_value(loss)
            self._check_loss(value, step)
            self.model.backward()  # every backend's backward sets fresh gradients: nothing to zero
            self.optimizer.step()
            return value
        scored = (Y != IGNORE).reshape(len(Y), -1).sum(axis=1)  # (B,) targets each row scores
        total = int(scored.sum())
        value = 0.0
        start = self.rng.get_state()
        for i, rows in enumerate(distributed.parts(len(Y), self.world, self.config.grad_accum)):
            self.rng.set_state(start)
            with self.model.computing_part(rows, len(Y)):
                _, loss = self.model.forward(X[rows], Y[rows])
            share = int(scored[rows].sum()) / total
            value += share * loss_value(loss)
            scale = share if self.scaler is None else self.scaler.scale(
                _scalar(share, self.model.device))
            self.model.backward(scale=scale, accumulate=i > 0)
        if self.world.distributed:  # the loss and the stop flag travel with the gradients
            value, stops = distributed.all_reduce_grads(
                self.model.parameters(), [value, float(self._stop.received)])
            self._stop.agreed(stops)
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

    @contextlib.contextmanager
    def _stopping(self) -> Iterator[None]:
        """What a stopped run keeps: a divergence its last checkpoint whose step went
        through; a signal between two updates a checkpoint of the run as it is, one inside
        an update (its arrays half-stepped) nothing new."""
        state = self.state
        try:
            yield
        except TrainingDiverged:
            if self.store is not None and self._saved_step == state.step:
                # the checkpoint just taken holds the very weights whose loss is not
                # finite: the run keeps the one before, whose step went through
                self.store.revert()
            raise
        except KeyboardInterrupt:
            signum = self._stop.signum or signal.SIGINT
            if self._updating or self.store is None:
                raise TrainingInterrupted(state.step, False, signum) from None
            if state.metrics and "val_loss" in state.metrics[-1] \
                    and state.metrics[-1]["step"] == state.step:
                state.metrics.pop()  # an evaluation of a step that did not happen
            self.save()
            raise TrainingInterrupted(state.step, True, signum) from None
        finally:
            self._updating = False

    # --- evaluations and records ---

    def _record(self, record: dict, log: bool = True) -> None:
        record = ordered(record)
        self.state.metrics.append(record)
        if self.store is not None and log:
            self.store.log(record)
        if self.progress is not None:
            self.progress(record)

    def _evaluation(self, step: int, batch_size: int) -> dict:
        """The evaluation before step ``step``'s update (train and val loss), recorded; the
        best weights kept by it under keep "best"."""
        cfg = self.config
        with self._holding(self._average_state()):
            train_loss, train_se = self._evaluate(step, "train", batch_size,
                                                  train_batches(cfg, self.splits["train"]))
            val_loss, val_se = self._evaluate(step, "val", batch_size)
            if cfg.keep == "best" and (self.best is None or val_loss < self.best.val_loss):
                self.best = Best(step, val_loss, self.model.state_dict())
        evaluation = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
                      **train_se, **val_se}
        # logged with the update it precedes: a checkpoint never holds an evaluation of a
        # step it has not taken
        self._record(evaluation, log=False)
        self._stop.check()
        return evaluation

    def _evaluate(self, step: int, split: str, batch_size: int, limit: int | None = None
                  ) -> tuple[float, dict]:
        """The loss on ``split`` (nats per token), and for the record the same in bits per
        character, ``{"<split>_bpc": bits}``, and for an estimate on a text its standard
        error, ``{"<split>_loss_se": se}``."""
        data = self.splits[split]
        if isinstance(data, TextSplit):
            measured = measure(self.model, data, self.config.eval_tokens, self.config.seed,
                               self.world, stop=lambda: self._stop.received)
            value, se = measured.loss, measured.se
        else:
            value, se = evaluate(self.model, data, batch_size, limit, self.world), None
        if not math.isfinite(value):
            raise TrainingDiverged(f"the {split} loss became {value} at step {step}; the run "
                                   "keeps its last checkpoint")
        extra = {f"{split}_bpc": bits(value, data.tokens_per_char)}
        if se is not None:
            extra[f"{split}_loss_se"] = se
        return value, extra

    def _test(self, batch_size: int) -> dict:
        """The test record, measured once, at the end, on the weights the run keeps."""
        steps = self.config.steps
        with self._holding(self._kept()):  # the checkpoint must resume from the last step
            loss, extra = self._evaluate(steps, "test", batch_size)
        record = {"step": steps, "test_loss": loss, "test_perplexity": perplexity(loss), **extra}
        if self.best is not None:
            record.update(best_step=self.best.step, best_val_loss=self.best.val_loss)
        return record

    def keep_weights(self) -> None:
        """Load the weights the run keeps into the model (``_kept``)."""
        kept = self._kept()
        if kept is not None:
            self.model.load_state_dict(kept)

    def _kept(self) -> dict[str, np.ndarray] | None:
        """The weights the run keeps: the best by val with keep "best", else the average with
        --ema; None where they are the model's own, the last."""
        return self.best.weights if self.best is not None else self._average_state()

    def _average_state(self, state: dict[str, np.ndarray] | None = None
                       ) -> dict[str, np.ndarray] | None:
        """Under --ema, a full state dict of the average: the averaged parameters with the
        buffers of ``state`` (default: the model's); None without an average."""
        if self.average is None:
            return None
        return {**(self.model.state_dict() if state is None else state),
                **self.average.state_dict()}

    @contextlib.contextmanager
    def _holding(self, weights: dict[str, np.ndarray] | None) -> Iterator[None]:
        """Inside, the model holds ``weights`` (a full state dict; None: its own); after,
        the weights it trains, as they were."""
        if weights is None:
            yield
            return
        last = self.model.state_dict()
        self.model.load_state_dict(weights)
        try:
            yield
        finally:
            self.model.load_state_dict(last)
