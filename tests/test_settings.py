"""Settings declared once: kinds, checks, JSON, flags, resolution and resume agreement."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from tinylm import settings
from tinylm.errors import ConfigError
from tinylm.models import MODELS, ModelConfig
from tinylm.ngram import NgramSettings
from tinylm.settings import NEURAL
from tinylm.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Toy:
    width: int = settings.setting(4, "how wide", settings.POSITIVE_INT, models=("a",))
    rate: float = settings.setting(0.5, "how fast", settings.POSITIVE_FLOAT, resume=True)
    seed: int = settings.setting(7, "a seed", settings.SEED, models=None)
    limit: int | None = settings.setting(None, "a limit", settings.ALL_OR_POSITIVE)

    def __post_init__(self) -> None:
        settings.check(self)


def test_kinds_parse_flags_and_check_values():
    assert settings.POSITIVE_INT.parse("3") == 3
    for bad in ("0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a positive whole number"):
            settings.POSITIVE_INT.parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive finite number"):
        settings.POSITIVE_FLOAT.parse("fast")
    for bad in ("inf", "nan", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            settings.POSITIVE_FLOAT.parse(bad)
    # 0 is "all", kept apart from None, the bounded default its reader decides
    assert settings.ALL_OR_POSITIVE.parse("0") == 0 and settings.ALL_OR_POSITIVE.parse("5") == 5
    assert settings.ALL_OR_POSITIVE.ok(None) and not settings.ALL_OR_POSITIVE.ok(-1)
    assert settings.SEED.parse(str(2**64 - 1)) == 2**64 - 1
    with pytest.raises(argparse.ArgumentTypeError):
        settings.SEED.parse(str(2**64))
    assert not settings.POSITIVE_INT.ok(True) and not settings.POSITIVE_INT.ok(2.0)


def test_a_config_checks_every_field_naming_it():
    with pytest.raises(ConfigError, match="width must be a positive whole number, got 0"):
        Toy(width=0)
    with pytest.raises(ConfigError, match="rate must be a positive finite number"):
        Toy(rate=float("nan"))
    with pytest.raises(ConfigError, match="unknown backend 'cuda'; choose one of numpy"):
        TrainConfig(backend="cuda")


def test_json_round_trip_keeps_big_seeds_exact_and_refuses_unknown_keys():
    config = TrainConfig(seed=2**64 - 1, eval_train_batches=None)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["seed"] == str(2**64 - 1)  # a string: exact for any JSON reader
    assert TrainConfig.from_dict(saved) == config
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**saved, "colour": "red"})
    with pytest.raises(ConfigError, match="seed must be"):
        TrainConfig.from_dict({**saved, "seed": "x"})


def test_flags_are_made_from_the_fields_with_their_defaults_in_the_help():
    parser = argparse.ArgumentParser()
    settings.add_flags(parser.add_argument_group("toy"), Toy, lambda f: f"(default: {f.default})")
    help_text = parser.format_help()
    assert "--width N" in help_text and "how wide (default: 4)" in help_text
    args = parser.parse_args(["--rate", "0.1", "--limit", "0"])
    assert settings.given(args, [Toy]) == {"rate": 0.1, "limit": 0}  # 0: all, said explicitly
    assert settings.resolve(Toy, [{"width": 9, "rate": 2.0}, settings.given(args, [Toy])]) == \
        Toy(width=9, rate=0.1, limit=0)


def test_reads_and_refusal_of_a_setting_the_model_ignores():
    fields = {f.name: f for f in settings.setting_fields(Toy)}
    assert settings.reads(fields["width"], "a", ()) and not settings.reads(fields["width"], "b", ())
    assert settings.reads(fields["seed"], "anything", ())
    assert settings.reads(fields["rate"], "mlp", ("mlp",)) and not settings.reads(fields["rate"], "ngram", ("mlp",))
    with pytest.raises(ConfigError, match="--width does not apply to --model b \\(it is read by a\\)"):
        settings.refuse_unread({"width": 3}, [Toy], "b", ())
    settings.refuse_unread({"width": 3, "seed": 1}, [Toy], "a", ())


def test_every_declared_setting_names_real_models():
    known = set(MODELS) | {"ngram", NEURAL}
    for cls in (ModelConfig, TrainConfig, NgramSettings):
        for f in settings.setting_fields(cls):
            assert set(settings.spec(f)["models"] or ()) <= known, f.name
            assert settings.spec(f)["help"], f.name


def test_resume_may_change_only_what_is_marked():
    saved = Toy()
    (again,) = settings.merge_resumed([saved], {"rate": 0.1, "width": 4})
    assert again == Toy(rate=0.1)  # the same width is fine, the rate may change
    with pytest.raises(ConfigError, match="--width 5 differs from the run being resumed \\(4\\); "
                                          "on --resume only --rate may change"):
        settings.merge_resumed([saved], {"width": 5})
