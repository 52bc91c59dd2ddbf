"""A neural run directory: what it holds and how to rebuild its model.

Layout of ``-o DIR`` after ``tinylm train --model mlp``::

    config.json       {"model", "model_config", "train_config", "vocab", "input", ...}
    checkpoint.json   format, SHA-256 of the arrays, step, RNG state, metrics (see checkpoint.py)
    checkpoint.npz    model and optimizer arrays (loaded with allow_pickle=False)
    metrics.jsonl     one record per update / evaluation, and the test loss
    train.txt val.txt test.txt   the run's own copy of its splits
    samples.txt       items sampled at the end; sample.txt for recipes that ask for one

The checkpoint is self-contained (its metadata repeats the configs and the
vocabulary); config.json is for people and for ``tinylm``'s dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tinylm.checkpoint import load_checkpoint
from tinylm.data import Tokenizer
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.models import DEFAULT_MODEL, MODEL_DEFAULTS, ModelConfig, build_model
from tinylm.recipes import get_recipe
from tinylm.rng import RNG
from tinylm.settings import resolve
from tinylm.train import TrainConfig


def resolve_configs(model: str | None, recipe: str | None, explicit: Mapping[str, Any],
                    vocab_size: int = 1) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new neural run: explicit > recipe > the model's defaults > defaults.

    ``model`` None means the recipe's model; a ``model`` that differs from
    the recipe's is refused rather than silently mixed with its settings.
    """
    layers: list[Mapping[str, Any]] = []
    if recipe is not None:
        chosen = get_recipe(recipe)
        if model is not None and model != chosen.model:
            raise ConfigError(f"--model {model} differs from the model of --recipe {recipe} "
                              f"({chosen.model}); leave --model out or choose another recipe")
        model = chosen.model
        layers.append(chosen.settings)
    model = model or DEFAULT_MODEL
    layers.insert(0, MODEL_DEFAULTS.get(model, {}))
    layers.append({**explicit, "model": model, "recipe": recipe})
    return (resolve(ModelConfig, layers, vocab_size=vocab_size), resolve(TrainConfig, layers))


def run_meta(config: TrainConfig, mconfig: ModelConfig, tokenizer: Tokenizer,
             source: str | None) -> dict[str, Any]:
    """What every checkpoint of a run repeats, and config.json holds."""
    return {
        "model": mconfig.model,
        "backend": config.backend,
        "loader": config.loader,
        "model_config": mconfig.to_dict(),
        "vocab": tokenizer.to_list(),
        "input": source,
    }


@dataclass
class LoadedRun:
    """A run directory's checkpoint, decoded: the model is built and loaded."""

    model: Any
    tokenizer: Tokenizer
    config: TrainConfig
    model_config: ModelConfig
    meta: dict
    tree: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def load_run(run_dir: str | Path, backend: str | None = None) -> LoadedRun:
    """Rebuild the model saved in ``run_dir`` (on its own backend unless ``backend`` is given)."""
    meta, tree = load_checkpoint(run_dir)
    try:
        run = meta["run"]
        config = TrainConfig.from_dict(meta["train_config"])
        mconfig = ModelConfig.from_dict(run["model_config"])
        tokenizer = Tokenizer.from_list(run["vocab"])
        model_state = tree["model"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint in {str(run_dir)!r} lacks {e}") from None
    except TinylmError as e:
        raise CheckpointError(f"the checkpoint in {str(run_dir)!r} is invalid: {e}") from None
    if mconfig.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"the checkpoint in {str(run_dir)!r}: model and vocabulary disagree")
    # the initial draw is overwritten by the saved arrays; any seed will do
    model = build_model(mconfig, backend or config.backend, RNG(1))
    model.load_state_dict(model_state)
    return LoadedRun(model, tokenizer, config, mconfig, meta, tree)
