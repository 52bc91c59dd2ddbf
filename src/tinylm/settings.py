"""Settings declared once: a config field is its default, its check, its help and its flag.

A run's settings live in frozen dataclasses: ``ModelConfig`` (tinylm.models:
what the network is), ``TrainConfig`` (tinylm.train_config: how it is trained) and
``NgramSettings`` (tinylm.ngram: what the count models search). Each field
is declared with ``setting(...)``, which records in the field's metadata

* ``kind``: which values are valid and how one is read from the command
  line (``POSITIVE_INT``, ``choice(...)``...), checked whenever a config is
  built, from flags or from a saved JSON file;
* ``help``: one line for ``--help``;
* ``models``: the models that read it (``None``: every model; ``NEURAL``:
  every neural model), so that a flag the chosen model ignores is refused;
* ``resume``: whether ``--resume`` may change it (``steps`` may, the width
  of the network may not).

Everything else is derived from those fields: the command-line flags and
their help with every default, the resolution order

    an explicit flag  >  the recipe  >  the model's defaults  >  the field's default

(see ``resolve``), the JSON form of a config, and the check that the flags
given with ``--resume`` agree with the run. Adding a setting is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from tinylm.errors import ConfigError

NEURAL = "neural"  # in ``models``: every neural model (tinylm.models.MODELS)
REQUIRED = dataclasses.MISSING  # a setting with no default (a model's name, its vocabulary size)


@dataclass(frozen=True)
class Kind:
    """The values a setting takes: ``parse`` reads one from a flag, ``ok`` tests any value."""

    cast: Callable[[str], Any]
    ok: Callable[[Any], bool]
    says: str  # "a positive whole number": what a valid value is
    choices: Callable[[], Sequence[str]] | None = None
    metavar: str | None = None
    to_json: Callable[[Any], Any] = lambda v: v
    from_json: Callable[[Any], Any] = lambda v: v

    def parse(self, text: str) -> Any:
        """argparse's ``type``: the value of ``text``, or an error saying what is valid."""
        try:
            value = self.cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.says}, got {text!r}") from None
        if self.choices is None and not self.ok(value):  # argparse itself checks choices
            raise argparse.ArgumentTypeError(f"must be {self.says}, got {text}")
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_or_text(v: Any) -> Any:
    """Seeds are saved as strings so that JSON readers without 64-bit integers keep them exact."""
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return v  # left for the check to refuse, naming the setting
    return v


POSITIVE_INT = Kind(int, lambda v: _is_int(v) and v > 0, "a positive whole number", metavar="N")
NONNEG_INT = Kind(int, lambda v: _is_int(v) and v >= 0, "zero or a positive whole number", metavar="N")
POSITIVE_FLOAT = Kind(float, lambda v: _is_number(v) and v > 0, "a positive finite number", metavar="X")
NONNEG_FLOAT = Kind(float, lambda v: _is_number(v) and v >= 0, "zero or a positive finite number",
                    metavar="X")
FRACTION = Kind(float, lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 up to 1 (not 1)",
                metavar="X")
SEED = Kind(int, lambda v: _is_int(v) and 0 < v < 2**64, "a whole number from 1 to 2**64 - 1",
            metavar="S", to_json=str, from_json=_int_or_text)
TEXT = Kind(str, lambda v: isinstance(v, str), "text", metavar="TEXT")
# a switch: the flag alone turns it on (no value follows it); in a config, true or false
SWITCH = Kind(bool, lambda v: isinstance(v, bool), "true or false")
# ``0`` on the command line, None in a config: no limit
# None: a bounded default the setting's reader decides; 0: all
ALL_OR_POSITIVE = Kind(int, lambda v: v is None or (_is_int(v) and v >= 0),
                       "a whole number >= 0 (0: all)", metavar="N")


def optional(kind: Kind, says: str) -> Kind:
    """``kind`` or None (None: the setting is left to a search or a default behaviour)."""
    return dataclasses.replace(kind, ok=lambda v: v is None or kind.ok(v), says=says)


def choice(options: Sequence[str] | Callable[[], Sequence[str]]) -> Kind:
    """One of ``options`` (a callable for a list that grows, such as the model registry)."""
    get = options if callable(options) else (lambda: tuple(options))
    return Kind(str, lambda v: v in get(), "one of the choices", choices=get)


def setting(default: Any, help: str, kind: Kind, *, models: Sequence[str] | str | None = NEURAL,
            resume: bool = False, flag: bool = True) -> Any:
    """A dataclass field that is a setting; see the module docstring."""
    if isinstance(models, str):
        models = (models,)
    meta = {"kind": kind, "help": help, "models": None if models is None else tuple(models),
            "resume": resume, "flag": flag}
    return dataclasses.field(default=default, metadata={"setting": meta})  # MISSING: required


def setting_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that are settings, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "setting" in f.metadata]


def spec(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata["setting"]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def reads(f: dataclasses.Field, model: str, neural_models: Sequence[str]) -> bool:
    """Whether ``model`` reads the setting ``f``."""
    models = spec(f)["models"]
    if models is None:
        return True
    return model in models or (NEURAL in models and model in neural_models)


def readers(f: dataclasses.Field, neural_models: Sequence[str]) -> list[str]:
    models = spec(f)["models"] or ()
    out = [m for m in models if m != NEURAL]
    return (list(neural_models) if NEURAL in models else []) + out


# --- configs: checks and JSON ---------------------------------------------------------------

class Settings:
    """Base of a frozen settings dataclass: checked when built, saved and loaded as JSON."""

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Rebuild from ``to_dict()`` output; unknown keys are refused, missing ones defaulted."""
        return from_dict(cls, d)


def check(config: Any) -> None:
    """Raise ``ConfigError`` naming the first setting of ``config`` whose value is invalid."""
    for f in setting_fields(type(config)):
        kind, value = spec(f)["kind"], getattr(config, f.name)
        if not kind.ok(value):
            if kind.choices is not None:
                raise ConfigError(f"unknown {f.name} {value!r}; choose one of "
                                  f"{', '.join(kind.choices())}")
            raise ConfigError(f"{f.name} must be {kind.says}, got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as JSON-ready values, every field included."""
    out = dataclasses.asdict(config)
    for f in setting_fields(type(config)):
        out[f.name] = spec(f)["kind"].to_json(out[f.name])
    return out


def from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Rebuild a config from ``to_dict`` output; unknown keys are refused, missing ones defaulted."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a {cls.__name__} must be a JSON object, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    values = {}
    for key, value in d.items():
        f = names[key]
        values[key] = spec(f)["kind"].from_json(value) if "setting" in f.metadata else value
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"invalid {cls.__name__}: {e}") from None


# --- the command line -----------------------------------------------------------------------

def add_flags(group: argparse._ArgumentGroup, cls: type,
              default_note: Callable[[dataclasses.Field], str]) -> None:
    """One flag per setting of ``cls``, defaulting to None so that given flags can be told apart.

    ``default_note(field)`` is the "(default: ...)" text for the help, which
    knows the per-model defaults that this module does not.
    """
    for f in setting_fields(cls):
        s = spec(f)
        if not s["flag"]:
            continue
        kind: Kind = s["kind"]
        if kind is SWITCH:
            group.add_argument(flag_of(f.name), dest=f.name, default=None, action="store_const",
                               const=True, help=f"{s['help']} {default_note(f)}".strip())
            continue
        group.add_argument(flag_of(f.name), dest=f.name, default=None, type=kind.parse,
                           choices=None if kind.choices is None else _LazyChoices(kind.choices),
                           metavar=kind.metavar if kind.choices is None else None,
                           help=f"{s['help']} {default_note(f)}".strip())


class _LazyChoices:
    """argparse ``choices`` read when the parser runs (registries can grow after import)."""

    def __init__(self, get: Callable[[], Sequence[str]]) -> None:
        self.get = get

    def __contains__(self, value: object) -> bool:
        return value in self.get()

    def __iter__(self):
        return iter(self.get())


def given(args: argparse.Namespace, classes: Iterable[type]) -> dict[str, Any]:
    """The settings the user gave on the command line (every flag's default is None)."""
    out = {}
    for cls in classes:
        for f in setting_fields(cls):
            if not spec(f)["flag"]:
                continue
            value = getattr(args, f.name, None)
            if value is not None:
                out[f.name] = value
    return out


def show(value: Any, kind: Kind | None = None) -> str:
    """A value as it would be typed on the command line."""
    if value is None:
        return "bounded" if kind is ALL_OR_POSITIVE else "none"
    if isinstance(value, str):
        return repr(value) if (not value or value.strip() != value or "\n" in value) else value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- resolution -----------------------------------------------------------------------------

def resolve(cls: type, layers: Sequence[Mapping[str, Any]], **fixed: Any) -> Any:
    """An instance of ``cls`` from layers of values, later layers winning.

    Each layer may hold keys of other config classes (a recipe sets model
    and training settings at once); only ``cls``'s own are taken.
    ``fixed`` values (such as a vocabulary size read from the data) go last.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in names})
    values.update(fixed)
    return cls(**values)


def refuse_unread(explicit: Mapping[str, Any], classes: Iterable[type], model: str,
                  neural_models: Sequence[str]) -> None:
    """``ConfigError`` for the first given setting that ``model`` does not read."""
    for cls in classes:
        for f in setting_fields(cls):
            # a setting no flag gives (a vocabulary size from the data) is never explicit,
            # whatever flag of another class shares its name
            if f.name in explicit and spec(f)["flag"] and not reads(f, model, neural_models):
                who = readers(f, neural_models)
                raise ConfigError(f"{flag_of(f.name)} does not apply to --model {model}"
                                  + (f" (it is read by {', '.join(who)})" if who else ""))


def merge_resumed(saved: Sequence[Any], explicit: Mapping[str, Any]) -> list[Any]:
    """The ``saved`` configs with the given settings that may change on resume applied.

    Every other given setting must agree with the run: a resumed run is the
    same run, continued.
    """
    free = [flag_of(f.name) for c in saved for f in setting_fields(type(c)) if spec(f)["resume"]]
    out = []
    for config in saved:
        changes = {}
        for f in setting_fields(type(config)):
            if f.name not in explicit or not spec(f)["flag"]:  # as in refuse_unread
                continue
            value, before = explicit[f.name], getattr(config, f.name)
            if spec(f)["resume"]:
                changes[f.name] = value
            elif value != before:
                raise ConfigError(f"{flag_of(f.name)} {show(value)} differs from the run being "
                                  f"resumed ({show(before)}); on --resume only "
                                  f"{', '.join(free)} may change")
        out.append(dataclasses.replace(config, **changes) if changes else config)
    return out
