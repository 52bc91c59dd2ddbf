"""Training recipes as data: a name -> the settings it stands for.

A recipe fixes a published protocol (model size, optimizer, schedule, loader,
evaluation cadence) so that ``tinylm train --recipe NAME`` reproduces known
figures. Resolution order for every setting, first match wins:

    an explicit flag  >  the recipe  >  the model's defaults  >  DEFAULTS

so ``--recipe mlp-classic --steps 300`` is the classic protocol cut short.
``resolve`` returns plain dicts; the trainer turns them into its frozen
``TrainConfig`` and validates them there.
"""

from __future__ import annotations

from typing import Any, Mapping

from tinylm.errors import ConfigError

# Settings every neural run has. None means "the model decides" or "no limit".
DEFAULTS: dict[str, Any] = {
    "backend": "numpy",
    "loader": "words",
    "seed": 42,
    "context": 3,
    "n_embd": 10,
    "n_hidden": 200,
    "n_layers": 1,
    "init": "default",
    "batch_size": 32,
    "steps": 5000,
    "optimizer": "adamw",
    "lr": 1e-2,
    "lr_schedule": "cosine",
    "weight_decay": 0.0,
    "eval_every": 500,
    "eval_train_batches": None,  # the whole train split
    # sample.txt: one continuous sample after training (0 tokens: not written)
    "sample_prompt": "\n",
    "sample_tokens": 0,
    "sample_seed": 42,
}

# What a plain ``--model NAME`` means when no recipe is given.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # The neural bigram is the count bigram learned by gradient descent: the
    # whole train split in every step (batch_size 0 = full batch) and the
    # large learning rate plain SGD needs on a one-layer softmax.
    "bigram": {
        "context": 1,
        "batch_size": 0,
        "steps": 200,
        "optimizer": "sgd",
        "lr": 50.0,
        "lr_schedule": "constant",
        "eval_every": 50,
    },
    "mlp": {},
    # The deep models train with plain SGD and a step decay, the protocol of
    # their classic recipes below, at the sizes of those recipes.
    "bnmlp": {
        "context": 3,
        "n_embd": 10,
        "n_hidden": 100,
        "n_layers": 5,
        "optimizer": "sgd",
        "lr": 0.1,
        "lr_schedule": "step",
    },
    "wavenet": {
        "context": 8,
        "n_embd": 24,
        "n_hidden": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "lr_schedule": "step",
    },
}

# The protocol both deep recipes share: every name its own item, 200,000
# steps of plain SGD on batches of 32 drawn with replacement, lr 0.1 dropping
# to 0.01 after 75 % of the steps, an exact evaluation every 10,000 steps.
_DEEP_CLASSIC: dict[str, Any] = {
    "loader": "words",
    "seed": 42,
    "batch_size": 32,
    "steps": 200_000,
    "optimizer": "sgd",
    "lr": 0.1,
    "lr_schedule": "step",
    "weight_decay": 0.0,
    "eval_every": 10_000,
    "eval_train_batches": None,
}

RECIPES: dict[str, dict[str, Any]] = {
    # The reference MLP of Bengio et al. 2003 in its classic modern protocol:
    # a continuous stream of names, consecutive windows as batches, AdamW with
    # a cosine schedule to zero, and 200 sampled tokens after "\nrichard".
    "mlp-classic": {
        "model": "mlp",
        "loader": "stream",
        "seed": 1337,
        "context": 3,
        "n_embd": 48,
        "n_hidden": 512,
        "n_layers": 1,
        "batch_size": 128,
        "steps": 50_000,
        "optimizer": "adamw",
        "lr": 7e-4,
        "lr_schedule": "cosine",
        "weight_decay": 1e-4,
        "eval_every": 200,
        "eval_train_batches": 20,
        "sample_prompt": "\nrichard",
        "sample_tokens": 200,
        "sample_seed": 42,
    },
    # A deep BatchNorm MLP (5 hidden layers of 100 tanh units, Kaiming init).
    "bnmlp-classic": {
        "model": "bnmlp",
        "context": 3,
        "n_embd": 10,
        "n_hidden": 100,
        "n_layers": 5,
        **_DEEP_CLASSIC,
    },
    # The hierarchical WaveNet-style model (76,579 parameters): 8 characters
    # fused pairwise over 3 levels.
    "wavenet-classic": {
        "model": "wavenet",
        "context": 8,
        "n_embd": 24,
        "n_hidden": 128,
        "n_layers": 1,
        **_DEEP_CLASSIC,
    },
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> dict[str, Any]:
    """A copy of the recipe ``name``; ``ConfigError`` if there is none."""
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(recipe_names())}"
        ) from None


def resolve(model: str, recipe: str | None, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of a run: explicit values over the recipe over the defaults.

    ``explicit`` holds only the settings the user gave (None values are
    ignored, so an argparse namespace with None defaults can be passed in).
    The result has every key of ``DEFAULTS`` plus "model" and "recipe".
    """
    settings: dict[str, Any] = dict(DEFAULTS)
    settings.update(MODEL_DEFAULTS.get(model, {}))
    if recipe is not None:
        settings.update(get_recipe(recipe))
    settings.update({k: v for k, v in explicit.items() if v is not None})
    settings["model"] = explicit.get("model") or settings.get("model") or model
    settings["recipe"] = recipe
    return settings
