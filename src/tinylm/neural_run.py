"""A neural run's life cycle, from settings to a finished run directory (bigram, mlp, ...).

``train`` resolves its settings (explicit settings > ``recipe`` > the model's
defaults, see tinylm.recipes), checks the input, the settings and the
out-dir before it writes anything, then runs tinylm.train.Trainer and says
its records through a tinylm.output.Output: a progress bar where the output
draws one, log lines at each evaluation otherwise. Ctrl-C saves a
checkpoint; ``resume`` goes on from it bit-identically. The command line
(tinylm.cli) and the Python API (tinylm.api) are both shells over this.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tinylm import (
    data, devices, diagnostics, distributed, memory, plotting, runs, settings, text, threads,
    tokenizer as tokenizers,
)
from tinylm.batches import eval_rows, split_for, text_split_for
from tinylm.errors import ConfigError, TinylmError
from tinylm.io import atomic_write_text, check_out_dir
from tinylm.models import ModelConfig, build_model
from tinylm.output import (
    SILENT, TEXT_PASSAGE, Output, format_loss, sample_and_save, say_loss,
    write_passage,
)
from tinylm.rng import RNG
from tinylm.sample import sample_tokens
from tinylm.train import (
    TEXT_EVAL_POSITIONS, Trainer, TrainingInterrupted, evaluate as split_loss, learning_rate,
    measure, train_batches,
)
from tinylm.train_config import TrainConfig

# With no terminal to draw a progress bar on, a progress line at least this often.
QUIET_SECONDS = 10.0
# An item this long, setting the block size, is named when a run does not fit in memory.
LONG_ITEM = 1000


# --- train ---------------------------------------------------------------------------

def train(out_dir: str | None, num_samples: int, lines3, source: str,
          inputs: list[str], model_name: str | None, explicit: dict[str, Any],
          world: distributed.World = distributed.World(),
          gate: distributed.Gate | None = None, output: Output = SILENT,
          chosen: tokenizers.TokenizerSettings = tokenizers.TokenizerSettings()) -> Path:
    """A new neural run: settings resolved, everything checked, the tokenizer ``chosen``
    made, then the run directory written.

    Of several processes (tinylm.distributed) each sets the run up; past the ``gate``,
    process 0 alone writes the directory."""
    gate = gate or distributed.Gate(world)
    out = runs.check_new_run_dir(out_dir, inputs) if world.main else Path(out_dir or ".")
    text_run = explicit.get("format") == "text"
    longest = None  # the longest item, where it set the block size
    # every setting is checked before a tokenizer is learned (minutes on a large text); the
    # tokenizer's size is then the model's
    _check_settings(*runs.resolve_configs(model_name, explicit.get("recipe"), explicit))
    tokenizer = tokenizers.build(chosen, lines3, text_run, output if world.main else SILENT)
    # a lines run's splits, each encoded once: for the block size and for the examples
    items3 = None if text_run else _items(lines3, tokenizer)
    mconfig, config = runs.resolve_configs(model_name, explicit.get("recipe"), explicit,
                                           tokenizer.vocab_size)
    # the count and the device are part of the arithmetic (tinylm.threads): saved, so a
    # resume keeps them
    config = dataclasses.replace(config, threads=threads.effective(config.threads),
                                 device=devices.resolve(config.device, config.backend))
    if mconfig.per_position:
        if mconfig.block_size == 0 and text_run:
            mconfig = dataclasses.replace(mconfig, block_size=text.DEFAULT_BLOCK)
        elif mconfig.block_size == 0:  # the fewest positions that hold every item and its end
            longest = max(int(items.lengths.max(initial=1)) - 1 for items in items3)
            mconfig = dataclasses.replace(mconfig, block_size=longest + 1)
    _check_memory(mconfig, config, lines3, text_run, longest, tokenizer.unit)
    encoded = text.encode_document(lines3, tokenizer, output) if text_run else None
    rng = RNG(config.seed)
    model = build_model(mconfig, config.backend, rng)
    trainer = _trainer(model, mconfig, config, items3 if encoded is None else encoded.parts,
                       tokenizer, rng, world, () if encoded is None else encoded.characters)
    del items3  # the trainer keeps the examples made of the items, not their tokens
    gate.passed()
    if not world.main:
        with distributed.together(world):  # process 0 writes the run's step 0
            pass
        return _run(trainer, model, mconfig, config, tokenizer, lines3, out, num_samples, output)
    # everything is checked: from here on the run directory is written
    with distributed.together(world):
        store = runs.RunWriter.create(out, inputs, runs.neural_settings(mconfig, config),
                                      tokenizer, source, lines3, encoded)
        if encoded is not None:  # from here on the splits are read from the run's tokens.npy
            mapped = text.split_tokens(runs.map_tokens(out), encoded.lengths)
            trainer.splits = {name: dataclasses.replace(split, tokens=view) for (name, split), view
                              in zip(trainer.splits.items(), mapped)}
            del encoded
        trainer.store = store
        try:
            trainer.save()  # step 0: a kill before the first periodic checkpoint resumes from here
        except BaseException:
            store.close()
            raise
    try:
        output.say(f"training {_what(trainer, mconfig, config)}: {config.steps} steps, batch "
              f"{config.batch_size or 'all'}, {config.optimizer} lr {config.lr:g} "
              f"{config.lr_schedule}, "
              + ("format text" if text_run else f"loader {config.loader}")
              + (f", recipe {config.recipe}" if config.recipe else ""))
        if text_run:
            sizes = " / ".join(f"{name} {s.n_tokens:,}" for name, s in trainer.splits.items())
            output.say(f"data: {source}: {tokenizer.unit}s {sizes}{_per_char(trainer)}; "
                       f"vocabulary {tokenizer.vocab_size}{tokenizer.note}; format text, block "
                       f"{trainer.splits['train'].width}")
        else:
            sizes = " / ".join(f"{name} {len(s):,}" for name, s in trainer.splits.items())
            output.say(f"data: {source}: examples {sizes}{_per_char(trainer)}; vocabulary "
                       f"{tokenizer.vocab_size}{tokenizer.note}")
        return _run(trainer, model, mconfig, config, tokenizer, lines3, out, num_samples, output)
    finally:
        store.close()


def _check_settings(mconfig: ModelConfig, config: TrainConfig) -> None:
    """``ConfigError`` for settings this machine or model cannot run: the thread count, the
    device, the precision, ``--compile``, diagnostics of a sequence model."""
    threads.check(config.threads)
    device = devices.resolve(config.device, config.backend)
    devices.check_dtype(config.dtype, config.backend, device)
    if config.compile:
        devices.check_compile(config.backend, device)
    if mconfig.per_position and config.diagnose_every:
        raise ConfigError(f"--diagnose-every is not available for the {mconfig.model} "
                          "model yet: its statistics are made for layer stacks")


def resume(out_dir: str, num_samples: int, explicit: dict[str, Any],
           world: distributed.World = distributed.World(),
           gate: distributed.Gate | None = None, output: Output = SILENT,
           model: str | None = None) -> Path:
    """Continue the run in -o DIR: its model, settings and splits come from the directory.

    With several processes, each reads the run; process 0 locks it and, past the
    ``gate``, writes it (the others read before anything is written)."""
    gate = gate or distributed.Gate(world)
    out = check_out_dir(out_dir)
    runs.read_manifest(out)  # a missing or foreign directory is refused before it is locked
    lock = runs.RunLock(out) if world.main else None
    store = None
    try:
        run = runs.open_run(out, weights="last")
        if run.kind != "neural":
            raise ConfigError(f"{str(out)!r} holds an n-gram run: it has nothing to resume")
        if model is not None and model != run.model_config.model:
            raise ConfigError(f"--model {model} differs from the run being resumed "
                              f"({run.model_config.model})")
        mconfig, config, _ = settings.merge_resumed(
            [run.model_config, run.config, run.tokenizer_settings], explicit)
        if "threads" in explicit:
            threads.check(config.threads)
        changed_threads = (run.config.threads and "threads" in explicit
                           and threads.effective(config.threads) != run.config.threads)
        # a run saved before devices were recorded computed on the CPU
        saved_device = "cpu" if run.config.device == "auto" else run.config.device
        config = dataclasses.replace(config, device=devices.resolve(
            config.device if "device" in explicit else saved_device, config.backend))
        changed_device = config.device != saved_device
        if config.steps < run.step:
            raise ConfigError(f"--steps {config.steps} is fewer than the {run.step} steps this "
                              "run has done; give more steps to extend it")
        model, tokenizer = run.model, run.tokenizer
        rng = RNG(config.seed)
        trainer = _trainer(model, mconfig, config, run.tokens or _items(run.lines3, tokenizer),
                           tokenizer, rng, world, run.characters)
        trainer.restore(run.manifest["state"], run.arrays, run.metrics)
        gate.passed()
        with distributed.together(world):  # process 0 reopens the run for writing
            if lock is not None:
                store = runs.RunWriter.reopen(run, lock, runs.neural_settings(mconfig, config),
                                              keep=len(trainer.state.metrics))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if store is None:  # a process that computes and writes nothing
        return _run(trainer, model, mconfig, config, tokenizer, run.lines3, out, num_samples, output)
    trainer.store = store
    try:
        output.say(f"resuming {_what(trainer, mconfig, config)} at step {trainer.state.step} of "
              f"{config.steps}")
        if changed_device:
            output.warn(f"tinylm: warning: this run computed on {saved_device}; on {config.device} the "
                  "arithmetic rounds differently, so from here on the numbers can differ from "
                  "those of an uninterrupted run")
        if changed_threads:
            output.warn(f"tinylm: warning: this run computed with {run.config.threads} thread"
                  f"{'s' if run.config.threads != 1 else ''}; with {config.threads}, BLAS "
                  "splits and rounds its sums differently, so from here on the numbers can "
                  "differ from those of an uninterrupted run")
        return _run(trainer, model, mconfig, config, tokenizer, run.lines3, out, num_samples, output)
    finally:
        store.close()


def _check_memory(mconfig: ModelConfig, config: TrainConfig, lines3, text_run: bool,
                  longest: int | None, unit: str) -> None:
    """Refuse, before anything is allocated, a run that cannot fit in memory (tinylm.memory)."""
    sequence = mconfig.per_position
    T = mconfig.block_size if sequence else 1
    if text_run:
        n = sum(map(len, lines3))
        data_bytes = n * text.token_dtype(mconfig.vocab_size).itemsize
        eval_positions = max(T, TEXT_EVAL_POSITIONS)
    else:
        rows = sum(map(len, lines3)) if sequence else sum(len(line) + 1 for lines in lines3
                                                         for line in lines)
        data_bytes = rows * (2 * T * 8 if sequence else (mconfig.context + 1) * 8)
        eval_positions = T * min(rows, eval_rows(T))
    train = (len(lines3[0]) if text_run or sequence else sum(len(x) + 1 for x in lines3[0]))
    # a batch larger than the train split is refused, with its own message, by the trainer
    batch = min(config.batch_size or train, train)
    advice = ("give a smaller --batch-size, --block-size, --n-embd, --n-hidden or --n-layers"
              if sequence else "give a smaller --batch-size, --n-embd, --n-hidden or --n-layers")
    if longest is not None and longest >= LONG_ITEM:
        advice = (f"the longest item has {longest:,} {unit}s, so the block size is "
                  f"{longest + 1:,}: give --block-size N (longer items are refused), or "
                  "--format text to read the file as one continuous document")
    memory.check(memory.estimate(mconfig, batch, T, eval_positions, data_bytes), advice)


def _what(trainer: Trainer, mconfig: ModelConfig, config: TrainConfig) -> str:
    model, world = trainer.model, trainer.world
    where = [config.backend]
    if model.device != "cpu":
        where.append(f"on {model.device}")
    if config.dtype != "float32":
        where.append(config.dtype)
    if world.distributed:
        where.append(f"{world.size} processes")
    if config.grad_accum > 1:
        where.append(f"{config.grad_accum} micro-batches a step")
    return f"{mconfig.model} ({', '.join(where)}, {model.num_params():,} parameters)"


def _trainer(model, mconfig: ModelConfig, config: TrainConfig, splits3,
             tokenizer: tokenizers.Tokenizer, rng: RNG, world: distributed.World,
             characters=()) -> Trainer:
    """The trainer of a run whose splits ``splits3`` are items (``data.Items``), or token
    arrays (standing for ``characters`` characters each)."""
    splits = _splits(splits3, tokenizer, mconfig, config, characters)
    if config.sample_tokens:
        tokenizer.encode(config.sample_prompt)  # refuse a prompt the vocabulary cannot spell, now
    return Trainer(config, model, splits, rng, world=world)


def _splits(splits3, tokenizer: tokenizers.Tokenizer, mconfig: ModelConfig, config: TrainConfig,
            characters=()) -> dict:
    if isinstance(splits3[0], np.ndarray):
        return {name: text_split_for(name, tokens, mconfig, tokenizer.eot, chars)
                for name, tokens, chars in zip(data.SPLIT_NAMES, splits3,
                                               characters or (None,) * 3)}
    return {name: split_for(name, items, mconfig, config.loader)
            for name, items in zip(data.SPLIT_NAMES, splits3)}


def _items(lines3, tokenizer: tokenizers.Tokenizer) -> tuple[data.Items, ...]:
    """A lines run's three splits as items, each encoded when first needed and then kept."""
    return tuple(data.Items(lines, tokenizer) for lines in lines3)


def _per_char(trainer: Trainer) -> str:
    """What a vocabulary line says of a tokenizer whose token is not one character: the
    characters a token of train stands for."""
    ratio = trainer.splits["train"].tokens_per_char
    return "" if ratio == 1.0 else f" ({1 / ratio:.2f} characters a token in train)"


def _run(trainer: Trainer, model, mconfig: ModelConfig, config: TrainConfig,
         tokenizer: tokenizers.Tokenizer, lines3, out: Path, num_samples: int,
         output: Output) -> Path:
    if not trainer.world.main:  # computes its share; process 0 reports and writes
        try:
            with threads.limited(config.threads):
                trainer.run()
        except TrainingInterrupted as e:  # process 0 says where the run was saved
            raise SystemExit(130 if e.signum == signal.SIGINT else 128 + e.signum) from None
        except distributed.ProcessFailed:
            raise  # perhaps process 0 itself went away: this one says so
        except TinylmError:  # a divergence is found by every process alike: process 0 says it
            raise SystemExit(2) from None
        return out
    reporter = _Reporter(config.steps, trainer.state.step, output)
    trainer.progress = _watched(reporter, config, trainer, out, tokenizer.vocab_size)
    try:
        with threads.limited(config.threads):
            result = trainer.run()
    except TrainingInterrupted as e:
        reporter.close()
        what = "stopped" if e.signum == signal.SIGINT else f"stopped by {signal.Signals(e.signum).name}"
        if e.saved:
            output.warn(f"tinylm: {what} before step {e.step}; checkpoint saved in {out}; "
                  f"continue with: tinylm train -o {out} --resume")
        if e.signum != signal.SIGINT:
            raise SystemExit(128 + e.signum) from None
        raise
    finally:
        reporter.close()
    val = result.last("val_loss")
    test = result.last("test_loss")
    trainer.keep_weights()  # the samples come from the weights the run keeps
    final = result.metrics[-1]
    tested = format_loss(test, final.get("test_loss_se"), trainer.splits["test"].tokens_per_char,
                         perplexity=config.format == "lines")
    if "best_step" in final:
        last = "" if final["best_val_loss"] == val else f"; at the last evaluation {val:.4f}"
        output.say(f"done in {result.seconds:.1f} s: kept the weights of step {final['best_step']} "
              f"(val loss {final['best_val_loss']:.4f}{last}): test loss {tested}")
    else:
        kept = ", the average of the weights" if config.ema else ""
        output.say(f"done in {result.seconds:.1f} s{kept}: val loss {val:.4f}, test loss {tested}")
    _finish(model, tokenizer, config, None if config.format == "text" else lines3[0], out,
            num_samples, result.metrics, output)
    return out


class _Reporter:
    """Shows the trainer's records: a progress bar where the output draws one, log lines otherwise.

    Without a bar a line is said at every evaluation and, between
    them, whenever ``QUIET_SECONDS`` have passed in silence, so a long run
    written to a log always shows that it is alive.
    """

    def __init__(self, total: int, start: int, output: Output) -> None:
        self.total = total
        self.output = output
        self.t0, self.n0 = time.perf_counter(), start
        self.last_line = self.t0
        self.last_loss = float("nan")
        self.bar = output.bar(total=total, initial=start, unit="step", dynamic_ncols=True)

    def __call__(self, record: dict) -> None:
        if "loss" in record:
            self.last_loss = record["loss"]
            if self.bar is not None:
                self.bar.update(1)
                if record["step"] % 20 == 0:
                    self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            elif time.perf_counter() - self.last_line >= QUIET_SECONDS:
                self.write(self._position(record["step"] + 1) + self._rate(record["step"] + 1))
        elif "val_loss" in record:
            self.write(self._position(record["step"])
                       + f" | train {self._loss(record, 'train')} | val {self._loss(record, 'val')}"
                       + f" = {record['val_bpc']:.4f} bits/char" + self._rate(record["step"]))
        elif "test_loss" in record:
            self.close()

    @staticmethod
    def _loss(record: dict, split: str) -> str:
        se = record.get(f"{split}_loss_se")
        return f"{record[f'{split}_loss']:.4f}" + ("" if se is None else f" ± {se:.4f}")

    def _position(self, step: int) -> str:
        return f"step {step:>{len(str(self.total))}}/{self.total}"

    def _rate(self, step: int) -> str:
        done = step - self.n0
        if done <= 0:
            return ""
        rate = done / (time.perf_counter() - self.t0)
        return f" | batch loss {self.last_loss:.4f} | {rate:.0f} steps/s"

    def write(self, line: str, warning: bool = False) -> None:
        """A line above the bar, or said (a warning: warned) when there is none."""
        self.last_line = time.perf_counter()
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            (self.output.warn if warning else self.output.say)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _watched(reporter: _Reporter, config: TrainConfig, trainer: Trainer, out: Path,
             vocab_size: int) -> Callable[[dict], None]:
    """The reporter, plus the initial-loss check and the --diagnose-every measurements."""
    model, train_split, every = trainer.model, trainer.splits["train"], config.diagnose_every
    recorder = None
    if every:
        # its own RNG, so the run's batches are the same with or without diagnostics
        # the measurement after the last update uses that update's learning rate
        recorder = diagnostics.Recorder(model, train_split, every,
                                        lambda step: learning_rate(config, min(step, config.steps - 1)),
                                        out / diagnostics.DIAGNOSTICS_FILE,
                                        seed=diagnostics.recorder_seed(config.seed),
                                        batch_size=config.batch_size, optimizer=trainer.optimizer)

    def progress(record: dict) -> None:
        reporter(record)
        if record.get("step") == 0 and "train_loss" in record:
            check = diagnostics.initial_loss_record(record["train_loss"], vocab_size)
            reporter.write(f"initial loss {check['initial_loss']:.4f}, expected "
                           f"ln({vocab_size}) = {check['expected_initial_loss']:.4f} "
                           "for uniform predictions")
            if check["initial_loss_warning"]:
                reporter.write(f"tinylm: warning: the initial loss is "
                               f"{check['initial_loss'] - check['expected_initial_loss']:+.2f} "
                               "away from uniform: the network starts out confidently wrong; "
                               "check its initialisation", warning=True)
        if recorder is not None:
            measured = recorder(record)
            if measured is not None:
                reporter.write(diagnostics.summary_line(measured))

    return progress


def _finish(model, tokenizer: tokenizers.Tokenizer, config: TrainConfig,
            train_lines: list[str] | None,
            out: Path, n: int, metrics: list[dict], output: Output) -> None:
    """Samples at the end of training (the ones ``tinylm sample -n N`` prints; a text run's,
    None for ``train_lines``: the passage ``tinylm sample`` prints) and loss.png."""
    written = ["manifest.json", "config.json", "weights", "metrics.jsonl", "train/val/test.txt",
               *tokenizer.files]
    if config.sample_tokens:
        text = sample_tokens(model, tokenizer, config.sample_prompt, config.sample_tokens,
                             RNG(config.sample_seed))
        atomic_write_text(out / "sample.txt", text + "\n")
        output.say(f"sample ({config.sample_tokens} tokens after {config.sample_prompt!r}):")
        output.say(text.strip("\n"))
        written.append("sample.txt")
    if n and train_lines is None:
        write_passage(output, model, tokenizer, TEXT_PASSAGE, config.sample_seed, out / "samples.txt")
        written.append("samples.txt")
    elif n:
        sample_and_save(output, model, tokenizer, n, config.sample_seed, train_lines,
                        config.loader == "stream", out / "samples.txt")
        written.append("samples.txt")
    try:
        plotting.plot_loss_curve(metrics, out / "loss.png")
    except ConfigError as e:  # matplotlib is not installed
        output.say(f"note: loss.png skipped: {e}")
    else:
        written.append("loss.png")
    output.say(f"wrote {out}/: {', '.join(written)}")


# --- sample and eval -----------------------------------------------------------------

def evaluate(run: runs.Run, output: Output = SILENT) -> dict[str, dict]:
    """The loss of a committed run's model on each split: ``{split: {"loss", "se", "bpc"}}``
    (nats per token; ``se`` None but for a text run's estimate; bits per character), said
    through ``output`` as ``tinylm eval`` prints it."""
    config = run.config
    losses = {}
    splits = _splits(run.tokens or _items(run.lines3, run.tokenizer), run.tokenizer,
                     run.model_config, config, run.characters)
    batch = config.batch_size or len(splits["train"])
    kept = run.manifest["state"].get("best")
    output.say(f"{run.model_config.model} ({config.backend}) at step {run.step}"
          + (f", kept weights of step {kept['step']}" if kept
             else ", the average of its weights" if "average" in run.manifest["state"] else "")
          + (", format text" if run.format == "text" else f", loader {config.loader}"))
    with threads.limited(config.threads):
        for name, split in splits.items():
            if run.format == "text":
                measured = measure(run.model, split, config.eval_tokens, config.seed)
                losses[name] = {"loss": measured.loss, "se": measured.se}
            else:
                limit = train_batches(config, split) if name == "train" else None
                losses[name] = {"loss": split_loss(run.model, split, batch, limit), "se": None}
            losses[name]["bpc"] = text.bits(losses[name]["loss"], split.tokens_per_char)
            say_loss(output, name, losses[name]["loss"], losses[name]["se"], split.tokens_per_char,
                     run.format == "lines")
            if run.format == "lines" and limit is not None and limit * batch < len(split):
                output.say(f"       (its first {limit * batch:,} of {len(split):,} examples, "
                           "a fixed sample: --eval-train-batches in training)")
    return losses
