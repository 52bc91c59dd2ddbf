"""Recipes as data: resolution order and the classic protocol's settings."""

from __future__ import annotations

import pytest

from tinylm.errors import ConfigError
from tinylm.recipes import DEFAULTS, RECIPES, get_recipe, recipe_names, resolve
from tinylm.train import TrainConfig


def test_every_recipe_makes_a_valid_train_config():
    for name in recipe_names():
        settings = resolve(RECIPES[name]["model"], name, {})
        config = TrainConfig.from_dict(settings)
        assert config.recipe == name


def test_classic_recipe_is_the_published_protocol():
    c = TrainConfig.from_dict(resolve("mlp", "mlp-classic", {}))
    assert (c.loader, c.context, c.n_embd, c.n_hidden, c.seed) == ("stream", 3, 48, 512, 1337)
    assert (c.optimizer, c.lr, c.weight_decay, c.lr_schedule) == ("adamw", 7e-4, 1e-4, "cosine")
    assert (c.batch_size, c.steps, c.eval_every, c.eval_train_batches) == (128, 50_000, 200, 20)
    assert (c.sample_prompt, c.sample_tokens, c.sample_seed) == ("\nrichard", 200, 42)


def test_explicit_flags_override_the_recipe_and_none_does_not():
    settings = resolve("mlp", "mlp-classic", {"steps": 300, "backend": "torch", "lr": None})
    assert settings["steps"] == 300 and settings["backend"] == "torch"
    assert settings["lr"] == 7e-4


def test_model_defaults_apply_without_a_recipe():
    bigram = resolve("bigram", None, {})
    assert (bigram["optimizer"], bigram["lr"], bigram["batch_size"]) == ("sgd", 50.0, 0)
    mlp = resolve("mlp", None, {})
    assert mlp["steps"] == DEFAULTS["steps"] and mlp["recipe"] is None


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_get_recipe_returns_a_copy():
    get_recipe("mlp-classic")["steps"] = 1
    assert RECIPES["mlp-classic"]["steps"] == 50_000
