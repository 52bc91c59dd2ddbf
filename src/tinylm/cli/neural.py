"""``tinylm train/sample/eval`` for the neural models (bigram, mlp, ...).

``train`` resolves its settings (explicit flags > ``--recipe`` > the model's
defaults, see tinylm.recipes), checks the input, the flags and the out-dir
before it writes anything, then runs tinylm.train.Trainer and prints its
records: a tqdm progress bar when stderr is a terminal, plain log lines at
each evaluation otherwise. Ctrl-C saves a checkpoint; ``--resume`` goes on
from it bit-identically.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

from tinylm import data
from tinylm.errors import ConfigError
from tinylm.io import atomic_write_text, check_out_dir, make_out_dir, write_json

# flag dest -> TrainConfig field, for the flags that take part in recipe resolution
_SETTINGS = ("backend", "loader", "seed", "context", "n_embd", "n_hidden", "n_layers", "init",
             "batch_size", "steps", "optimizer", "lr", "lr_schedule", "weight_decay", "eval_every",
             "eval_train_batches")


def add_train_arguments(group: argparse._ArgumentGroup) -> None:
    """The neural-network flags of ``tinylm train`` (None = taken from the recipe or defaults)."""
    from tinylm.cli import _nonneg_float, _nonneg_int, _positive_float, _positive_int
    from tinylm.models import DEEP_INITS
    from tinylm.recipes import DEFAULTS, recipe_names
    from tinylm.train import BACKENDS, OPTIMIZERS, SCHEDULES

    group.add_argument("--backend", choices=BACKENDS, default=None,
                       help=f"implementation of the model (default: {DEFAULTS['backend']})")
    group.add_argument("--recipe", choices=recipe_names(), default=None,
                       help="a published protocol; explicit flags override its settings")
    group.add_argument("--context", type=_positive_int, default=None,
                       help=f"tokens the model reads to predict the next (default: {DEFAULTS['context']})")
    group.add_argument("--n-embd", type=_positive_int, default=None,
                       help=f"embedding size per token (default: {DEFAULTS['n_embd']})")
    group.add_argument("--n-hidden", type=_positive_int, default=None,
                       help=f"hidden units per layer (default: {DEFAULTS['n_hidden']})")
    group.add_argument("--n-layers", type=_positive_int, default=None,
                       help="hidden layers, for the deeper models")
    group.add_argument("--init", choices=DEEP_INITS, default=None,
                       help="initialisation of the deep models (bnmlp, wavenet): default = kaiming, "
                       "Kaiming gains and a 0.1x output layer; noscale: without the 0.1; "
                       "naive: N(0, 1) weights")
    group.add_argument("--batch-size", type=_nonneg_int, default=None,
                       help=f"examples per step, 0 = the whole train split "
                       f"(default: {DEFAULTS['batch_size']}; bigram: 0)")
    group.add_argument("--steps", type=_positive_int, default=None,
                       help=f"optimizer steps (default: {DEFAULTS['steps']}; bigram: 200)")
    group.add_argument("--lr", type=_positive_float, default=None,
                       help=f"(peak) learning rate (default: {DEFAULTS['lr']:g}; bigram: 50)")
    group.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                       help=f"learning-rate schedule (default: {DEFAULTS['lr_schedule']})")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help=f"default: {DEFAULTS['optimizer']}; bigram: sgd")
    group.add_argument("--weight-decay", type=_nonneg_float, default=None,
                       help="AdamW's decoupled weight decay (default: 0)")
    group.add_argument("--eval-every", type=_positive_int, default=None,
                       help=f"evaluate every this many steps and at the last (default: {DEFAULTS['eval_every']})")
    group.add_argument("--eval-train-batches", type=_nonneg_int, default=None,
                       help="batches of the train split to estimate its loss on, 0 = all "
                       f"(default: {DEFAULTS['eval_train_batches']})")
    group.add_argument("--diagnose-every", type=_nonneg_int, default=0, metavar="N",
                       help="every N steps measure activation, gradient and update:data statistics "
                       "into diagnostics.jsonl, for 'tinylm diagnose' (0: never)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run saved in -o DIR (bit-identical to not stopping); "
                       "--steps may extend it")


def register_diagnose(sub: argparse._SubParsersAction, add_run_dir: Callable) -> None:
    """Add the ``diagnose`` subcommand."""
    from tinylm.cli import _positive_int, _seed

    p = sub.add_parser(
        "diagnose", help="print and plot training diagnostics of a trained neural run",
        description="Measure the model saved in -o DIR on a batch of its training data and print, "
        "per layer, activation mean/std/saturation, dead units and gradient statistics, and per "
        "weight matrix the gradient statistics and update:data ratio; write histograms, the "
        "update:data curves (recorded with 'train --diagnose-every N') and the loss curve as PNGs.")
    add_run_dir(p, required=True)
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="examples to measure on (default: 512, or the whole train split if smaller)")
    p.add_argument("--seed", type=_seed, default=42, help="seed of the RNG that draws the batch")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="where to write the PNGs (default: DIR/diagnostics)")
    p.set_defaults(handler=_diagnose)


def _diagnose(args: argparse.Namespace) -> int:
    from tinylm.diagnostics import diagnose_run

    result = diagnose_run(args.out_dir, args.plots, args.batch_size, args.seed)
    print(f"diagnostics of {args.out_dir} at step {result.step}")
    print(result.table())
    if not result.history:
        print("(update:data over training is recorded by 'tinylm train --diagnose-every N'; "
              "this run has only the final ratios)")
    print(f"wrote {', '.join(str(p) for p in result.plots)}")
    return 0


# --- train ---------------------------------------------------------------------------

def _explicit(args: argparse.Namespace) -> dict:
    explicit = {name: getattr(args, name, None) for name in _SETTINGS}
    explicit["model"] = args.model
    return explicit


def _train_config(args: argparse.Namespace):
    from tinylm.recipes import resolve
    from tinylm.train import TrainConfig

    settings = resolve(args.model, args.recipe, _explicit(args))
    if settings["eval_train_batches"] == 0:
        settings["eval_train_batches"] = None
    return TrainConfig.from_dict(settings)


def _resumed_config(args: argparse.Namespace, saved):
    """The saved config, with --steps applied; any other flag must agree with it."""
    import dataclasses

    given = {k: v for k, v in _explicit(args).items() if v is not None and k != "steps"}
    if given.get("eval_train_batches") == 0:
        given["eval_train_batches"] = None
    if args.recipe is not None:
        given["recipe"] = args.recipe
    for name, value in given.items():
        if getattr(saved, name) != value:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} differs from the run being resumed "
                              f"({getattr(saved, name)}); only --steps may change on --resume")
    if args.steps is not None:
        return dataclasses.replace(saved, steps=args.steps)
    return saved


class _Reporter:
    """Shows the trainer's records: tqdm on a terminal, log lines otherwise."""

    def __init__(self, total: int, start: int, use_bar: bool) -> None:
        self.total = total
        self.bar = None
        self.t0, self.n0 = time.perf_counter(), start
        self.last_loss = float("nan")
        if use_bar:
            try:
                from tqdm import tqdm
            except ImportError:
                pass  # plain log lines
            else:
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                                file=sys.stderr)

    def __call__(self, record: dict) -> None:
        if "loss" in record:
            self.last_loss = record["loss"]
            if self.bar is not None:
                self.bar.update(1)
                if record["step"] % 20 == 0:
                    self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        elif "val_loss" in record:
            now = time.perf_counter()
            done = record["step"] - self.n0
            rate = done / (now - self.t0) if done > 0 else 0.0
            line = (f"step {record['step']:>{len(str(self.total))}}/{self.total} | "
                    f"train {record['train_loss']:.4f} | val {record['val_loss']:.4f}")
            if done > 0:
                line += f" | batch loss {self.last_loss:.4f} | {rate:.0f} steps/s"
            self.write(line)
        elif "test_loss" in record:
            self.close()

    def write(self, line: str, file=None) -> None:
        """A line above the bar, or to ``file`` (default stdout) when there is none."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _watched(reporter: _Reporter, config, model, train_split, out: Path, every: int,
             vocab_size: int) -> Callable[[dict], None]:
    """The reporter, plus the initial-loss check and the --diagnose-every measurements."""
    from tinylm import diagnostics
    from tinylm.train import learning_rate

    recorder = None
    if every:
        # its own RNG, so the run's batches are the same with or without diagnostics
        recorder = diagnostics.Recorder(model, train_split, every,
                                        lambda step: learning_rate(config, step),
                                        out / diagnostics.DIAGNOSTICS_FILE,
                                        seed=diagnostics.recorder_seed(config.seed),
                                        batch_size=config.batch_size)

    def progress(record: dict) -> None:
        reporter(record)
        if record.get("step") == 0 and "train_loss" in record:
            check = diagnostics.initial_loss_record(record["train_loss"], vocab_size)
            reporter.write(f"initial loss {check['initial_loss']:.4f}, expected "
                            f"ln({vocab_size}) = {check['expected_initial_loss']:.4f} "
                            "for uniform predictions")
            if check["initial_loss_warning"]:
                reporter.write(f"tinylm: warning: the initial loss is "
                                f"{check['initial_loss'] - check['expected_initial_loss']:+.2f} away from "
                                "uniform: the network starts out confidently wrong; check its "
                                "initialisation", file=sys.stderr)
        if recorder is not None:
            measured = recorder(record)
            if measured is not None:
                reporter.write(diagnostics.summary_line(measured))

    return progress


def _splits(lines3, tokenizer, config):
    from tinylm.batches import make_split

    return {name: make_split(name, lines, tokenizer, config.context, config.loader)
            for name, lines in zip(data.SPLIT_NAMES, lines3)}


def train(args: argparse.Namespace) -> int:
    from tinylm.checkpoint import has_checkpoint
    from tinylm.models import build_model
    from tinylm.rng import RNG
    from tinylm.runs import load_run, model_config, run_meta
    from tinylm.train import Trainer, TrainingInterrupted, make_optimizer

    out = check_out_dir(args.out_dir)
    if args.resume:
        # everything comes from the run directory: its checkpoint and its splits
        loaded = load_run(out)
        config = _resumed_config(args, loaded.config)  # --model included
        if args.input is not None:
            raise ConfigError("--input cannot change on --resume: the run keeps its own splits")
        tokenizer = loaded.tokenizer
        lines3 = data.load_splits(out)
        meta = loaded.meta["run"]
        source = meta.get("input")
        model, rng = loaded.model, RNG(config.seed)
    else:
        if has_checkpoint(out):
            raise ConfigError(f"out-dir {str(out)!r} already holds a trained run; "
                              "continue it with --resume or choose another -o")
        config = _train_config(args)
        source = str(args.input) if args.input is not None else None
        lines = data.read_lines(args.input if args.input is not None else data.default_dataset())
        lines3 = data.split_lines(lines, seed=42, source=source)
        tokenizer = data.Tokenizer.from_lines(lines)
        rng = RNG(config.seed)
        mconfig = model_config(config, tokenizer.vocab_size)
        model = build_model(mconfig, config.backend, rng)
        meta = run_meta(config, mconfig, tokenizer, source)
    splits = _splits(lines3, tokenizer, config)
    if config.sample_tokens:
        tokenizer.encode(config.sample_prompt)  # refuse a prompt the vocabulary cannot spell, now
    optimizer = make_optimizer(config, model)

    trainer = Trainer(config, model, optimizer, splits, rng, out_dir=out, run_meta=meta)

    # everything is checked: from here on the run directory is written
    make_out_dir(out)
    if args.resume:
        trainer.restore(loaded.meta, loaded.tree)
    else:
        data.save_splits(out, lines3)
        write_json(out / "config.json", {**meta, "train_config": config.to_dict()})

    n_params = sum(int(v.size) for v in model.state_dict().values())
    what = f"{config.model} ({config.backend}, {n_params:,} parameters)"
    if args.resume:
        print(f"resuming {what} at step {trainer.state.step} of {config.steps}")
    else:
        print(f"training {what}: {config.steps} steps, batch {config.batch_size or 'all'}, "
              f"{config.optimizer} lr {config.lr:g} {config.lr_schedule}, loader {config.loader}"
              + (f", recipe {config.recipe}" if config.recipe else ""))
        sizes = " / ".join(f"{name} {len(s):,}" for name, s in splits.items())
        print(f"data: {source or 'bundled names'}: examples {sizes}; vocabulary {tokenizer.vocab_size}")
    reporter = _Reporter(config.steps, trainer.state.step, sys.stderr.isatty())
    trainer.progress = _watched(reporter, config, model, splits["train"], out, args.diagnose_every,
                                tokenizer.vocab_size)
    try:
        result = trainer.run()
    except TrainingInterrupted as e:
        reporter.close()
        if e.checkpoint is not None:
            print(f"tinylm: stopped before step {e.step}; checkpoint saved in {e.checkpoint}; "
                  f"continue with: tinylm train --model {config.model} -o {out} --resume", file=sys.stderr)
        raise
    finally:
        reporter.close()
    val = result.last("val_loss")
    test = result.last("test_loss")
    print(f"done in {result.seconds:.1f} s: val loss {val:.4f}, test loss {test:.4f} "
          f"(perplexity {math.exp(test):.3f})")
    _finish(model, tokenizer, config, lines3[0], out, args.num_samples)
    return 0


def _finish(model, tokenizer, config, train_lines, out: Path, n: int) -> None:
    """Samples at the end of training: the same ones ``tinylm sample -n N`` prints."""
    from tinylm.cli import print_samples
    from tinylm.rng import RNG
    from tinylm.sample import mark_known, sample_items, sample_tokens

    written = ["config.json", "checkpoint.json", "checkpoint.npz", "metrics.jsonl", "train/val/test.txt"]
    if config.sample_tokens:
        text = sample_tokens(model, tokenizer, config.sample_prompt, config.sample_tokens,
                             RNG(config.sample_seed))
        atomic_write_text(out / "sample.txt", text + "\n")
        print(f"sample ({config.sample_tokens} tokens after {config.sample_prompt!r}):")
        print(text.strip("\n"))
        written.append("sample.txt")
    if n:
        items = sample_items(model, tokenizer, n, RNG(config.sample_seed),
                             continuous=config.loader == "stream")
        print_samples(mark_known(items, train_lines))
        atomic_write_text(out / "samples.txt", "".join(item + "\n" for item in items))
        written.append("samples.txt")
    print(f"wrote {out}/: {', '.join(written)}")


# --- sample and eval -----------------------------------------------------------------

def sample(args: argparse.Namespace) -> int:
    from tinylm.cli import print_samples
    from tinylm.rng import RNG
    from tinylm.runs import load_run
    from tinylm.sample import mark_known, sample_items

    run = load_run(args.out_dir)
    run.tokenizer.encode(args.prompt)  # DataError naming a character the model never saw
    train_lines, _, _ = data.load_splits(args.out_dir)
    items = sample_items(run.model, run.tokenizer, args.num_samples, RNG(args.seed), prompt=args.prompt,
                         temperature=args.temperature, top_k=args.top_k,
                         continuous=run.config.loader == "stream")
    print_samples(mark_known(items, train_lines))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from tinylm.runs import load_run
    from tinylm.train import evaluate as split_loss

    run = load_run(args.out_dir)
    config = run.config
    splits = _splits(data.load_splits(args.out_dir), run.tokenizer, config)
    batch = config.batch_size or len(splits["train"])
    print(f"{config.model} ({config.backend}) at step {run.step}, loader {config.loader}")
    for name, split in splits.items():
        loss = split_loss(run.model, split, batch)
        print(f"{name:>5}: loss {loss:.4f}, perplexity {math.exp(loss):.3f}")
    return 0
