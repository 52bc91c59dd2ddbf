"""Training recipes as data: a name -> the settings of a published protocol.

A recipe fixes a protocol (model size, optimizer, schedule, loader,
evaluation cadence) so that ``tinylm train --recipe NAME`` reproduces known
figures. Its settings are fields of ``ModelConfig`` and ``TrainConfig``;
resolution order for every setting, first match wins (see
``tinylm.runs.resolve_configs``):

    an explicit flag  >  the recipe  >  the model's defaults  >  the field's default

so ``--recipe mlp-classic --steps 300`` is the classic protocol cut short.
Adding a recipe is one entry in ``RECIPES``; ``tinylm recipes`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from tinylm.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    about: str                  # one line for ``tinylm recipes``
    settings: Mapping[str, Any]  # "model" and any other setting

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    @property
    def model(self) -> str:
        return self.settings["model"]


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

# The reference toolkit's training of its sequence models: every name its own item, batches
# of 32, AdamW at a constant 5e-4 with betas (0.9, 0.99) and weight decay 0.01.
_SEQUENCE_REFERENCE: dict[str, Any] = {
    "loader": "words",
    "seed": 42,
    "n_embd": 64,
    "block_size": 0,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 5e-4,
    "beta2": 0.99,
    "weight_decay": 0.01,
    "lr_schedule": "constant",
    "eval_every": 500,
    "eval_train_batches": 100,
}

RECIPES: dict[str, Recipe] = {
    "mlp-classic": Recipe(
        "the MLP of Bengio et al. 2003 in its classic modern protocol: a continuous stream of "
        "names, consecutive windows as batches, AdamW with a cosine schedule to zero, and 200 "
        "sampled tokens after '\\nrichard'",
        {
            "model": "mlp",
            "loader": "stream",
            "seed": 1337,
            "context": 3,
            "n_embd": 48,
            "n_hidden": 512,
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
        }),
    "bnmlp-classic": Recipe(
        "a deep BatchNorm MLP: 5 hidden layers of 100 tanh units, Kaiming init, 200,000 SGD steps",
        {"model": "bnmlp", "context": 3, "n_embd": 10, "n_hidden": 100, "n_layers": 5,
         **_DEEP_CLASSIC}),
    "wavenet-classic": Recipe(
        "the hierarchical WaveNet-style model (76,579 parameters): 8 characters fused pairwise "
        "over 3 levels, 200,000 SGD steps",
        {"model": "wavenet", "context": 8, "n_embd": 24, "n_hidden": 128, **_DEEP_CLASSIC}),
    "transformer-makemore": Recipe(
        "the reference toolkit's Transformer: 4 pre-norm blocks of 4 heads, n_embd 64, AdamW "
        "5e-4 decayed to 0 over 20,000 steps (a cosine; the steps and the decay chosen on "
        "val: at a constant 5e-4 val stalls near 1.99), keeping the weights of the lowest "
        "val loss",
        {"model": "transformer", "n_layers": 4, "n_heads": 4, **_SEQUENCE_REFERENCE,
         "steps": 20_000, "lr_schedule": "cosine", "keep": "best"}),
    "gru-makemore": Recipe(
        "the reference toolkit's GRU: n_embd 64, hidden state 64, AdamW 5e-4, 30,000 steps",
        {"model": "gru", "n_embd2": 64, "steps": 30_000, **_SEQUENCE_REFERENCE}),
    "best": Recipe(
        "tinylm's best on the names within 15 minutes of 2 cores (with --threads 2): a GRU with "
        "a hidden state of 352, embedding 64 and dropout 0.4, AdamW at a constant 2e-3 after "
        "667 warmup steps with weight decay 0.1, 20,000 batches of 64, the weights averaged "
        "over the updates (--ema 0.9995) and the average of the lowest val loss kept (chosen "
        "on val among GRUs and Transformers of several sizes)",
        {**_SEQUENCE_REFERENCE, "model": "gru", "n_embd": 64, "n_embd2": 352, "dropout": 0.4,
         "batch_size": 64, "lr": 2e-3, "weight_decay": 0.1, "lr_schedule": "constant",
         "warmup": 667, "steps": 20_000, "ema": 0.9995, "keep": "best", "eval_every": 1000,
         "eval_train_batches": 50}),
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; ``ConfigError`` if there is none."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(recipe_names())}"
        ) from None
