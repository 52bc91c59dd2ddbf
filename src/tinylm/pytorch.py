"""PyTorch, imported the first time something needs it.

numpy is tinylm's core and PyTorch an extra: a numpy run never loads it
(half a second and a few hundred MB), and where it is missing, whatever
asked for it says so in one line with the command that installs it. Every
module outside the torch backends gets PyTorch from ``load``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tinylm.errors import ConfigError


def load(what: str = "this") -> ModuleType:
    """The ``torch`` module; a ConfigError naming ``what`` needs it where it is not installed."""
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ConfigError(f"{what} needs PyTorch: pip install 'tinylm[torch]'") from None
