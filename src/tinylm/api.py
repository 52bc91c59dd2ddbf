"""The Python API: ``tinylm.train`` and ``tinylm.load``, the library the command line is a shell over.

::

    import tinylm
    run = tinylm.train(model="transformer", input="my.txt", format="text", steps=2000,
                       out_dir="runs/t")
    run.sample(tokens=300, prompt="def ")     # a text run: one passage
    run.evaluate()                            # {"train": ..., "val": ..., "test": ...}
    run = tinylm.train(out_dir="runs/t", resume=True, steps=3000)
    run = tinylm.load("runs/t"); run.metrics[-1]; run.config; run.model

``train`` takes exactly the settings of ``tinylm train`` (the fields of
``ModelConfig``, ``TrainConfig`` and ``NgramSettings``, by their Python
names), with the same defaults, recipes and checks, since both come from
the same declaration (tinylm.settings) and run the same code
(tinylm.neural_run, tinylm.ngram_run). Errors are ``TinylmError``s with the
command line's one-line messages. Progress goes through ``tqdm.auto`` (a
widget in Jupyter, a bar in a terminal) and lines are printed, unless
``quiet=True``; ``output`` takes any ``tinylm.output.Output``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from tinylm import data, distributed, neural_run, ngram_run, runs, settings, text, threads
from tinylm.tokenizer import Tokenizer, TokenizerSettings
from tinylm.errors import ConfigError
from tinylm.models import MODELS, ModelConfig
from tinylm.ngram import NgramSettings
from tinylm.output import SILENT, TEXT_PASSAGE, Output, notebook
from tinylm.recipes import RECIPES
from tinylm.rng import RNG
from tinylm.sample import mark_known, sample_items, sample_tokens
from tinylm.train_config import TrainConfig

SETTINGS = (ModelConfig, TrainConfig, NgramSettings, TokenizerSettings)
COUNT_MODELS = ("ngram",)


def model_names() -> tuple[str, ...]:
    return COUNT_MODELS + tuple(MODELS)


@dataclasses.dataclass(frozen=True)
class Sample:
    """A sampled item, and whether it is new (in no line of the training split)."""

    text: str
    new: bool


class Run:
    """A committed run directory, verified and opened: its settings, its metrics and its model
    (with the weights the run keeps), and what can be done with it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._run = runs.open_run(path)

    @property
    def path(self) -> Path:
        return self._run.path

    @property
    def model(self) -> Any:
        return self._run.model

    @property
    def format(self) -> str:
        """"lines" or "text"."""
        return self._run.format

    @property
    def config(self) -> dict[str, Any]:
        """Every setting of the run, by name (the tokenizer's, and the model's, the training's
        or the n-gram's); ``vocab_size`` is the vocabulary the model has."""
        tokenizer = self._run.tokenizer_settings.to_dict()
        if self._run.kind == "ngram":
            return {**tokenizer, "model": "ngram", **self._run.ngram.to_dict()}
        return {**tokenizer, **self._run.model_config.to_dict(), **self._run.config.to_dict()}

    @property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer: ``encode(text)``, ``decode(ids)``, ``vocab_size``, ``eot``."""
        return self._run.tokenizer

    @property
    def metrics(self) -> list[dict]:
        """The committed records of metrics.jsonl: updates, evaluations, the test."""
        return list(self._run.metrics)

    @property
    def step(self) -> int:
        return self._run.step

    def evaluate(self, output: Output = SILENT, bits: bool = False) -> dict[str, float]:
        """The loss (nats per token) on train, val and test, as ``tinylm eval`` measures it;
        with ``bits``, the same in bits per character."""
        evaluate = ngram_run.evaluate if self._run.kind == "ngram" else neural_run.evaluate
        with threads.limited(self._run.config.threads if self._run.config else 0):
            return {name: m["bpc" if bits else "loss"]
                    for name, m in evaluate(self._run, output).items()}

    def sample(self, n: int = 10, prompt: str = "", temperature: float = 1.0,
               top_k: int | None = None, seed: int = 42, tokens: int | None = None
               ) -> list[Sample] | str:
        """``n`` items marked new or copied, as ``tinylm sample`` prints them; or, with ``tokens``
        (a text run's default: 500), one continuous passage of that many tokens (characters,
        for a char run)."""
        run = self._run
        run.tokenizer.encode(prompt)  # DataError naming a character the model never saw
        if tokens is not None or run.format == "text":
            return sample_tokens(run.model, run.tokenizer, prompt, tokens or TEXT_PASSAGE,
                                 RNG(seed), temperature, top_k)
        items = sample_items(run.model, run.tokenizer, n, RNG(seed), prompt=prompt,
                             temperature=temperature, top_k=top_k,
                             continuous=run.loader == "stream")
        return [Sample(item, not copied) for item, copied in mark_known(items, run.lines3[0])]

    def __repr__(self) -> str:
        return f"tinylm.Run({str(self.path)!r}, {self.config['model']}, step {self.step})"


def load(path: str | os.PathLike) -> Run:
    """The committed run in ``path``; ``CheckpointError`` for one that is missing or damaged."""
    return Run(path)


def train(model: str | None = None, input: str | os.PathLike | None = None, *,
          out_dir: str | os.PathLike = "out", train_file: str | os.PathLike | None = None,
          val_file: str | os.PathLike | None = None, test_file: str | os.PathLike | None = None,
          resume: bool = False, num_samples: int = 10, quiet: bool = False,
          output: Output | None = None, **settings_: Any) -> Run:
    """Train a model as ``tinylm train`` does, write the run to ``out_dir`` and open it.

    ``model`` is one of ``model_names()`` (default: the recipe's, else ngram); ``input`` a
    UTF-8 file (default: the bundled names); ``train_file``/``val_file``/``test_file`` data
    that comes split; ``resume=True`` continues the run in ``out_dir`` (``steps`` may extend
    it). Every other keyword is a setting, e.g. ``steps=2000, format="text", lr=1e-3``.
    """
    output = output or (SILENT if quiet else notebook())
    explicit = _settings(settings_)
    path = run_training(explicit, model=model, input=input, out_dir=out_dir, train=train_file,
                        val=val_file, test=test_file, resume=resume, num_samples=num_samples,
                        output=output)
    return Run(path)


def _settings(given: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings checked by name: an unknown one is refused, as an unknown flag is."""
    known = {f.name for cls in SETTINGS for f in settings.setting_fields(cls)
             if settings.spec(f)["flag"]}
    for name in given:
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}; the settings are those of "
                              "'tinylm train --help', with _ for - (for example n_embd)")
    return {name: value for name, value in given.items() if value is not None}


def run_training(explicit: dict[str, Any], *, model: str | None, input, out_dir, train=None,
                 val=None, test=None, resume: bool = False, num_samples: int = 10,
                 output: Output = SILENT, world: distributed.World = distributed.World(),
                 gate: distributed.Gate | None = None) -> Path:
    """A run from its explicit settings to its directory: what ``tinylm train`` and ``train``
    share. Returns the run directory."""
    gate = gate or distributed.Gate(world)
    if model is not None and model not in model_names():
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(model_names())}")
    if resume:
        for flag, value in (("--input", input), ("--train", train), ("--val", val),
                            ("--test", test)):
            if value is not None:
                raise ConfigError(f"{flag} cannot be given with --resume: the run keeps its own "
                                  "splits")
        return neural_run.resume(out_dir, num_samples, explicit, world, gate, output, model=model)
    if model is None:
        model = RECIPES[explicit["recipe"]].model if explicit.get("recipe") else "ngram"
    settings.refuse_unread(explicit, SETTINGS, model, tuple(MODELS))
    text_format = explicit.get("format", "lines") == "text"
    if text_format and "loader" in explicit:
        raise ConfigError("--loader applies to --format lines: a text is always read as one "
                          "continuous stream")
    chosen = settings.resolve(TokenizerSettings, [explicit])  # refused before data is read
    splits, source, inputs = read_data(input, train, val, test, text_format)
    out_dir = None if out_dir is None else str(out_dir)
    if model in COUNT_MODELS:
        if world.distributed:
            raise ConfigError("the n-gram models count in one pass: run them without torchrun")
        return ngram_run.train(out_dir, num_samples, splits, source, inputs,
                               settings.resolve(NgramSettings, [explicit]),
                               settings.resolve(TrainConfig, [explicit]), output, chosen)
    return neural_run.train(out_dir, num_samples, splits, source, inputs, model, explicit, world,
                            gate, output, chosen)


def read_data(input, train, val, test, text_format: bool = False
              ) -> tuple[tuple[Any, Any, Any], str, list[str]]:
    """The run's three splits (lists of lines, or with ``text_format`` the document's three
    parts as bytes), a description of their source and the input files."""
    split_files = {"--train": train, "--val": val, "--test": test}
    if input is not None and any(split_files.values()):
        given = [flag for flag, path in split_files.items() if path]
        raise ConfigError(f"-i/--input and {'/'.join(given)} exclude each other: give one file "
                          "to split, or the files already split")
    if train is None and (val or test):
        raise ConfigError("--val and --test need --train: the file the model learns from")
    if train is not None:
        read = text.read_text_splits if text_format else data.read_splits
        splits = read(train, val, test)
        given = [("train", train), ("val", val), ("test", test)]
        return (splits, ", ".join(f"{name} {path}" for name, path in given if path),
                [str(path) for _, path in given if path])
    path = input if input is not None else data.default_dataset()
    if text_format:
        return text.split_text(text.read_text(path), str(path)), str(path), [str(path)]
    return data.split_lines(data.read_lines(path), source=str(path)), str(path), [str(path)]


__all__ = ["Run", "Sample", "load", "train", "model_names"]
