"""Recipes as data: resolution order, the classic protocol's settings, what each recipe may set."""

from __future__ import annotations

import dataclasses

import pytest

from tinylm import settings
from tinylm.errors import ConfigError
from tinylm.models import MODEL_DEFAULTS, MODELS, ModelConfig
from tinylm.recipes import RECIPES, get_recipe, recipe_names
from tinylm.runs import resolve_configs
from tinylm.train import TrainConfig


def test_every_recipe_resolves_to_valid_configs():
    for name in recipe_names():
        mconfig, config = resolve_configs(None, name, {}, vocab_size=27)
        assert config.recipe == name and mconfig.model == RECIPES[name].model


def test_recipes_and_model_defaults_set_only_settings_their_model_reads():
    fields = {f.name: f for cls in (ModelConfig, TrainConfig) for f in settings.setting_fields(cls)}
    layers = [(r.model, dict(r.settings)) for r in RECIPES.values()]
    layers += [(model, defaults) for model, defaults in MODEL_DEFAULTS.items()]
    for model, values in layers:
        for key in values:
            assert key in fields, key
            # the bigram's context of 1 shapes its data windows, though the net reads one token
            if (model, key) != ("bigram", "context") and key != "model":
                assert settings.reads(fields[key], model, tuple(MODELS)), (model, key)


def test_classic_recipe_is_the_published_protocol():
    m, c = resolve_configs(None, "mlp-classic", {})
    assert (c.loader, m.context, m.n_embd, m.n_hidden, c.seed) == ("stream", 3, 48, 512, 1337)
    assert (c.optimizer, c.lr, c.weight_decay, c.lr_schedule) == ("adamw", 7e-4, 1e-4, "cosine")
    assert (c.batch_size, c.steps, c.eval_every, c.eval_train_batches) == (128, 50_000, 200, 20)
    assert (c.sample_prompt, c.sample_tokens, c.sample_seed) == ("\nrichard", 200, 42)


def test_explicit_flags_override_the_recipe():
    m, c = resolve_configs("mlp", "mlp-classic", {"steps": 300, "backend": "torch", "n_hidden": 64})
    assert (c.steps, c.backend, m.n_hidden) == (300, "torch", 64)
    assert c.lr == 7e-4


def test_a_model_other_than_the_recipes_is_refused():
    with pytest.raises(ConfigError, match="--model bnmlp differs from the model of --recipe"):
        resolve_configs("bnmlp", "mlp-classic", {})


def test_model_defaults_apply_without_a_recipe():
    bigram_m, bigram = resolve_configs("bigram", None, {})
    assert (bigram.optimizer, bigram.lr, bigram.batch_size, bigram_m.context) == ("sgd", 50.0, 0, 1)
    mlp_m, mlp = resolve_configs("mlp", None, {})
    assert mlp.steps == TrainConfig().steps and mlp.recipe is None
    assert mlp_m == ModelConfig("mlp", 1)


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_recipes_cannot_be_changed_by_a_caller():
    with pytest.raises(TypeError):
        get_recipe("mlp-classic").settings["steps"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_recipe("mlp-classic").about = "x"
    assert RECIPES["mlp-classic"].settings["steps"] == 50_000
